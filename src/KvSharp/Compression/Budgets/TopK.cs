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

    /// <summary>Keep flags for the <paramref name="keep"/> highest scores (and every +∞ score).</summary>
    public static bool[] KeepMask(ReadOnlySpan<float> scores, int keep)
    {
        var mask = new bool[scores.Length];
        var order = Descending(scores);
        for (int r = 0; r < order.Length; r++)
            mask[order[r]] = r < keep || float.IsPositiveInfinity(scores[order[r]]);
        return mask;
    }

    /// <summary>Scores equal to +∞ (tokens a scorer forces).</summary>
    public static int Forced(ReadOnlySpan<float> scores)
    {
        int n = 0;
        foreach (float s in scores) if (float.IsPositiveInfinity(s)) n++;
        return n;
    }
}
