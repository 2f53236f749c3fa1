namespace KvSharp.Tokenization;

/// <summary>
/// Rank-ordered BPE merge table over token ids: repeatedly merges the adjacent pair with the lowest
/// rank, leftmost first on ties (the order of Hugging Face's BPE model and llama.cpp's
/// llm_tokenizer_bpe), using a priority queue so a word of n symbols costs O(n log n).
/// </summary>
internal sealed class BpeMerges
{
    private readonly Dictionary<long, (int Rank, int Merged)> _pairs;

    public BpeMerges(Dictionary<long, (int Rank, int Merged)> pairs) { _pairs = pairs; }

    public int Count => _pairs.Count;

    public static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>
    /// Builds the table from (left, right) token strings in rank order. A merge whose parts or
    /// result are not in the vocabulary can never produce a token and is skipped.
    /// </summary>
    public static BpeMerges Build(IEnumerable<(string Left, string Right)> merges, Dictionary<string, int> vocab)
    {
        var pairs = new Dictionary<long, (int, int)>(merges.TryGetNonEnumeratedCount(out int count) ? count : 0);
        var lookup = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        Span<char> buffer = stackalloc char[256];
        int rank = 0;
        foreach (var (l, r) in merges)
        {
            int thisRank = rank++;
            if (!vocab.TryGetValue(l, out int a) || !vocab.TryGetValue(r, out int b)) continue;
            int len = l.Length + r.Length;
            var joined = len <= buffer.Length ? buffer[..len] : new char[len];
            l.AsSpan().CopyTo(joined);
            r.AsSpan().CopyTo(joined[l.Length..]);
            if (!lookup.TryGetValue(joined, out int m)) continue;
            pairs.TryAdd(Key(a, b), (thisRank, m));
        }
        return new BpeMerges(pairs);
    }

    /// <summary>Merges <paramref name="symbols"/> (token ids) in place and returns the final count.</summary>
    public int Apply(List<int> symbols)
    {
        int n = symbols.Count;
        if (n < 2) return n;
        var ids = symbols.ToArray();
        var prev = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
        // Priority packs (rank, position): lowest rank first, then leftmost.
        var queue = new PriorityQueue<(int Left, int Right, int LeftId, int RightId, int Merged), long>(n);
        void TryAdd(int left, int right)
        {
            if (left < 0 || right < 0) return;
            if (_pairs.TryGetValue(Key(ids[left], ids[right]), out var p))
                queue.Enqueue((left, right, ids[left], ids[right], p.Merged), ((long)p.Rank << 32) | (uint)left);
        }
        for (int i = 0; i + 1 < n; i++) TryAdd(i, i + 1);
        while (queue.TryDequeue(out var e, out _))
        {
            // Skip entries made stale by an earlier merge: a side was absorbed or changed.
            if (ids[e.Left] != e.LeftId || ids[e.Right] != e.RightId || next[e.Left] != e.Right) continue;
            ids[e.Left] = e.Merged;
            ids[e.Right] = -1;
            next[e.Left] = next[e.Right];
            if (next[e.Right] >= 0) prev[next[e.Right]] = e.Left;
            TryAdd(prev[e.Left], e.Left);
            TryAdd(e.Left, next[e.Left]);
        }
        symbols.Clear();
        for (int i = 0; i >= 0; i = next[i]) symbols.Add(ids[i]);
        return symbols.Count;
    }
}
