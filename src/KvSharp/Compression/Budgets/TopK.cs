namespace KvSharp.Compression.Budgets;

/// <summary>Top-k over the pooled scores of several heads: how many of the k best each head holds.</summary>
internal static class TopK
{
    /// <summary>
    /// Adds to <paramref name="counts"/>[head] how many of the <paramref name="keep"/> best scores of
    /// <paramref name="heads"/> lie in that head, skipping the <paramref name="counts"/>[head] best of each head
    /// (already granted). Ties: the later token (higher index) first, then the lower head index.
    /// </summary>
    public static int[] CountsPerHead(HeadScores scores, IEnumerable<int> heads, long keep, int[] counts)
    {
        var pool = new List<(float Score, int Head, int Index)>();
        foreach (int h in heads)
        {
            var s = scores[h];
            var order = Descending(s);
            for (int r = counts[h]; r < order.Length; r++) pool.Add((s[order[r]], h, order[r]));
        }
        pool.Sort((a, b) => b.Score != a.Score ? b.Score.CompareTo(a.Score) : b.Index != a.Index ? b.Index.CompareTo(a.Index) : a.Head.CompareTo(b.Head));
        for (int i = 0; i < Math.Min(keep, pool.Count); i++) counts[pool[i].Head]++;
        return counts;
    }

    /// <summary>Indices of <paramref name="scores"/> from the highest score down (ties: later index first).</summary>
    public static int[] Descending(ReadOnlySpan<float> scores)
    {
        var order = new int[scores.Length];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        var s = scores.ToArray();
        Array.Sort(order, (a, b) => s[b] != s[a] ? s[b].CompareTo(s[a]) : b.CompareTo(a));
        return order;
    }

    /// <summary>
    /// Keep flags for the <paramref name="keep"/> highest scores (and every +∞ score), ranked as <see cref="Descending"/>
    /// ranks them (ties: the later index first). O(n): a selection of the keep-th rank, not a sort (a decode press cuts
    /// every head at every compression step, hundreds of heads per step).
    /// </summary>
    public static bool[] KeepMask(ReadOnlySpan<float> scores, int keep)
    {
        var mask = new bool[scores.Length];
        if (keep >= scores.Length)
        {
            Array.Fill(mask, true);
            return mask;
        }
        if (keep > 0)
        {
            // The first key past the cut (rank keep): every key below it is kept.
            ulong cut = scores.Length - keep <= SmallCut ? LowestRanked(scores, scores.Length - keep) : SelectKey(scores, keep);
            for (int i = 0; i < mask.Length; i++) mask[i] = RankKey(scores[i], i) < cut;
        }
        for (int i = 0; i < mask.Length; i++) mask[i] |= float.IsPositiveInfinity(scores[i]);
        return mask;
    }

    /// <summary>
    /// A key whose ascending order is <see cref="Descending"/>'s: the higher score first (−0 = +0, NaN last), then the later
    /// index. Keys are distinct (the index is in them).
    /// </summary>
    private static ulong RankKey(float score, int index)
    {
        uint ascending = 0; // NaN: below −∞
        if (!float.IsNaN(score))
        {
            uint bits = BitConverter.SingleToUInt32Bits(score == 0 ? 0f : score); // −0 as +0
            ascending = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
        }
        return (ulong)~ascending << 32 | ~(uint)index;
    }

    // Up to this many cut tokens (a decode press cuts a few a step) are found in one pass over the keys; more by a selection.
    private const int SmallCut = 64;

    /// <summary>The smallest of the <paramref name="count"/> largest rank keys (the lowest-ranked tokens), in one pass.</summary>
    private static ulong LowestRanked(ReadOnlySpan<float> scores, int count)
    {
        Span<ulong> worst = stackalloc ulong[count]; // the largest keys so far, ascending: worst[0] is the smallest held
        int held = 0;
        for (int i = 0; i < scores.Length; i++)
        {
            ulong key = RankKey(scores[i], i);
            if (held < count)
            {
                int at = held++;
                while (at > 0 && worst[at - 1] > key)
                {
                    worst[at] = worst[at - 1];
                    at--;
                }
                worst[at] = key;
            }
            else if (key > worst[0])
            {
                // worst[0] drops out; the held keys below the new one move down a place.
                int at = 0;
                while (at + 1 < count && worst[at + 1] < key)
                {
                    worst[at] = worst[at + 1];
                    at++;
                }
                worst[at] = key;
            }
        }
        return worst[0];
    }

    /// <summary>The rank key of rank <paramref name="rank"/> (0 = the highest score) by a selection.</summary>
    private static ulong SelectKey(ReadOnlySpan<float> scores, int rank)
    {
        var keys = scores.Length <= 2048 ? stackalloc ulong[scores.Length] : new ulong[scores.Length];
        for (int i = 0; i < keys.Length; i++) keys[i] = RankKey(scores[i], i);
        return Select(keys, rank);
    }

    /// <summary>The <paramref name="k"/>-th smallest of distinct <paramref name="keys"/> (0-based), reordering them (Hoare's selection).</summary>
    private static ulong Select(Span<ulong> keys, int k)
    {
        int lo = 0, hi = keys.Length - 1;
        while (lo < hi)
        {
            ulong a = keys[lo], b = keys[lo + (hi - lo) / 2], c = keys[hi];
            ulong pivot = Math.Max(Math.Min(a, b), Math.Min(Math.Max(a, b), c)); // median of three
            int i = lo, j = hi;
            while (i <= j)
            {
                while (keys[i] < pivot) i++;
                while (keys[j] > pivot) j--;
                if (i <= j)
                {
                    (keys[i], keys[j]) = (keys[j], keys[i]);
                    i++;
                    j--;
                }
            }
            // keys[lo..j] ≤ pivot ≤ keys[i..hi]; between them (if anything) the pivot itself.
            if (k <= j) hi = j;
            else if (k >= i) lo = i;
            else return keys[k];
        }
        return keys[k];
    }

    /// <summary>Scores equal to +∞ (tokens a scorer forces).</summary>
    public static int Forced(ReadOnlySpan<float> scores)
    {
        int n = 0;
        foreach (float s in scores) if (float.IsPositiveInfinity(s)) n++;
        return n;
    }
}
