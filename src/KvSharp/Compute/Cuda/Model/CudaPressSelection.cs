using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Quantization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>What every device press shares: the checks of its cache, and the choice on the host by the CPU press's budget.</summary>
internal static class CudaPressSelection
{
    /// <summary>Refuses a cache a device press cannot prefill: not empty, several sequences, too small for the context.</summary>
    public static void CheckEmpty(string press, CudaPagedKvCache cache, IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Count == 0) throw new KvSharpException($"{press}: the context is empty");
        if (cache.Batch != 1) throw new KvSharpException($"{press} on the GPU presses a cache of one sequence, not {cache.Batch}");
        if (cache.Length != 0) throw new KvSharpException($"{press} on the GPU prefills an empty cache, not one holding {cache.Length} positions");
        if (tokens.Count > cache.Capacity) throw new KvSharpException($"{press}: the GPU cache holds {cache.Capacity} positions, the context {tokens.Count} tokens");
    }

    /// <summary>A prefill that observes nothing: <see cref="CheckEmpty"/>, then the context through <paramref name="model"/>.</summary>
    public static void PlainPrefill(string press, CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        CheckEmpty(press, cache, tokens);
        model.Forward(tokens.ToArray(), cache);
    }

    /// <summary>Refuses what is not a fresh prefill of <paramref name="tokens"/> (storage index = position in every head).</summary>
    public static void CheckFresh(string press, CudaPagedKvCache cache, IReadOnlyList<int> tokens, int protectedPrefix)
    {
        CheckHolds(press, cache, tokens, protectedPrefix);
        if (!cache.StoresEveryPositionInOrder())
            throw new KvSharpException($"{press} on the GPU scores a freshly prefilled cache (every head storing every position in order), not an evicted, re-quantized or synthesized one");
    }

    /// <summary>
    /// <see cref="CheckFresh"/> for a press whose prefill collected attention statistics: a refused cache stops the
    /// collection (its device buffers freed) before the refusal propagates.
    /// </summary>
    public static void CheckFreshObserved(string press, CudaPagedKvCache cache, IReadOnlyList<int> tokens, int protectedPrefix)
    {
        try
        {
            CheckFresh(press, cache, tokens, protectedPrefix);
        }
        catch
        {
            if (cache.IsCollectingStatistics) cache.StopStatistics();
            throw;
        }
    }

    /// <summary>Per-head scores [layer · KvHeads + KV head] of a one-sequence cache as <see cref="HeadScores"/>.</summary>
    public static HeadScores ToHeadScores(CudaPagedKvCache cache, float[][] perHead)
    {
        var scores = new HeadScores(cache.Config.NumLayers, cache.Config.NumKvHeads);
        for (int h = 0; h < perHead.Length; h++) scores[h / scores.KvHeads, h % scores.KvHeads] = perHead[h];
        return scores;
    }

    /// <summary>
    /// Refuses what a press that scores the stored tokens (not a fresh prefill) cannot compress: several sequences, another
    /// length than the context's, positions not known, statistics still being collected.
    /// </summary>
    public static void CheckStored(string press, CudaPagedKvCache cache, IReadOnlyList<int> tokens, int protectedPrefix)
    {
        CheckHolds(press, cache, tokens, protectedPrefix);
        if (cache.IsCollectingStatistics) throw new KvSharpException($"{press}: the cache is still collecting attention statistics");
    }

    /// <summary>Refuses a cache that is not one sequence holding <paramref name="tokens"/>, or a protected prefix outside them.</summary>
    private static void CheckHolds(string press, CudaPagedKvCache cache, IReadOnlyList<int> tokens, int protectedPrefix)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(tokens);
        int length = tokens.Count;
        if (cache.Batch != 1) throw new KvSharpException($"{press} on the GPU presses a cache of one sequence, not {cache.Batch}");
        if (cache.Length != length) throw new KvSharpException($"{press}: the cache holds {cache.Length} positions but {length} tokens were given");
        if (protectedPrefix < 0 || protectedPrefix > length) throw new KvSharpException($"{press}: protected prefix {protectedPrefix} outside 0..{length}");
    }

    /// <summary>Each head's stored positions in ascending order (the CPU cache's order of masks and scores), per head [layer · KvHeads + KV head].</summary>
    public static int[][] AscendingPositions(CudaPagedKvCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        return [.. Enumerable.Range(0, cache.HeadCount).Select(h => cache.StoredPositions(h).Order().ToArray())];
    }

    /// <summary>How many of each head's stored positions lie before <paramref name="protectedPrefix"/> (kept outside every budget, tier 0).</summary>
    public static int[] Protected(int[][] ascending, int protectedPrefix) => [.. ascending.Select(p => p.Count(x => x < protectedPrefix))];

    /// <summary>Flags per head in ascending position (<paramref name="ascending"/>) as the device's storage-order flags.</summary>
    public static bool[][] ToStorageOrder(CudaPagedKvCache cache, int[][] ascending, IReadOnlyList<bool[]> flags)
    {
        var result = new bool[flags.Count][];
        for (int h = 0; h < flags.Count; h++)
        {
            var stored = cache.StoredPositions(h);
            result[h] = new bool[stored.Length];
            for (int i = 0; i < stored.Length; i++) result[h][i] = flags[h][Array.BinarySearch(ascending[h], stored[i])];
        }
        return result;
    }

    /// <summary>
    /// Chooses as <see cref="ScoredPress.Select(PressContext)"/> does from <paramref name="scores"/> (per head, ascending
    /// position: the protected prefix kept outside the budget, the budget's count of best candidates per head, every +∞
    /// one, ties to the later token) and evicts the rest on the device. Returns the keep flags per head.
    /// </summary>
    public static bool[][] KeepAndEvict(CudaPagedKvCache cache, IBudget budget, HeadScores scores, int protectedPrefix)
    {
        var keep = KeepMasks(cache, budget, scores, protectedPrefix, out var ascending);
        EvictAllBut(cache, ascending, keep);
        return keep;
    }

    /// <summary>Evicts on the device every token not flagged in <paramref name="keep"/> (per head, ascending position: <paramref name="ascending"/>).</summary>
    public static void EvictAllBut(CudaPagedKvCache cache, int[][] ascending, IReadOnlyList<bool[]> keep) =>
        cache.Evict(ToStorageOrder(cache, ascending, [.. keep.Select(k => k.Select(x => !x).ToArray())]));

    /// <summary>The keep flags <see cref="KeepAndEvict"/> evicts by, without evicting; also each head's positions in ascending order.</summary>
    public static bool[][] KeepMasks(CudaPagedKvCache cache, IBudget budget, HeadScores scores, int protectedPrefix, out int[][] ascending)
    {
        ascending = AscendingPositions(cache);
        for (int i = 0; i < scores.HeadCount; i++)
            if (scores[i].Length != ascending[i].Length)
                throw new InvalidOperationException($"{scores[i].Length} scores for head {i}, which stores {ascending[i].Length} tokens");
        return KeepMasks(budget, scores, Protected(ascending, protectedPrefix));
    }

    /// <summary>The keep flags per head of <paramref name="budget"/> over <paramref name="scores"/>, the first <paramref name="first"/>[head] tokens kept outside it.</summary>
    public static bool[][] KeepMasks(IBudget budget, HeadScores scores, int[] first)
    {
        var candidates = new HeadScores(scores.Layers, scores.KvHeads);
        for (int i = 0; i < scores.HeadCount; i++) candidates[i / scores.KvHeads, i % scores.KvHeads] = scores[i][first[i]..];
        return ScoredPress.KeepMasks(budget, candidates, first);
    }

    /// <summary>
    /// <see cref="PrecisionTiers.Apply"/> for every head at once, on the device: each tier t whose format pair
    /// <paramref name="formats"/>[t] is not null re-quantizes its tokens into that pair (<see cref="CudaPagedKvCache.Requantize"/>,
    /// one launch per tier and target pair over the heads concerned), then the tokens of null tiers are evicted;
    /// <see cref="PrecisionTiers.Unchanged"/> tokens keep their storage. <paramref name="tiers"/>: per head, one tier per
    /// stored token in ascending position. Returns per head whether each token is still stored.
    /// </summary>
    /// <remarks>
    /// The CPU store writes each tier's tokens in ascending position into dense blocks, whatever the order of the tiers;
    /// the device writes them in storage order, and a re-quantization moves the blocks it leaves alone ahead of the ones it
    /// regroups. So each head first re-quantizes a tier that has a token in every full block (then every block is
    /// regrouped and the other tokens stay in ascending position), and its other tiers after, in tier order: the same
    /// blocks as the CPU's whenever the stored order was ascending to begin with (a fresh prefill, an eviction) and such a
    /// tier exists (MiKV's and ZipVL's low tier in practice, LeanKV's less important one). Otherwise the blocks may group
    /// a tier's tokens differently (each still in its tier's formats).
    /// </remarks>
    public static bool[][] ApplyTiers(CudaPagedKvCache cache, IReadOnlyList<byte[]> tiers, IReadOnlyList<FormatPair?> formats)
    {
        var ascending = AscendingPositions(cache);
        for (int h = 0; h < tiers.Count; h++)
            if (tiers[h].Length != ascending[h].Length) throw new InvalidOperationException($"{tiers[h].Length} tiers for head {h}, which stores {ascending[h].Length} tokens");
        var requantized = Enumerable.Range(0, formats.Count).Where(t => formats[t] != null).ToArray();
        var blocks = cache.BlockTokenCounts();
        var order = new int[tiers.Count][];
        for (int h = 0; h < tiers.Count; h++)
        {
            var stored = cache.StoredPositions(h);
            var tierOf = stored.Select(p => tiers[h][Array.BinarySearch(ascending[h], p)]).ToArray();
            bool Covers(int t)
            {
                for (int b = 0, at = 0; b < blocks[h].Length; at += blocks[h][b++])
                    if (blocks[h][b] == cache.BlockTokens && !tierOf.AsSpan(at, blocks[h][b]).Contains((byte)t)) return false;
                return tierOf.Contains((byte)t);
            }
            int first = requantized.FirstOrDefault(Covers, -1);
            order[h] = first < 0 ? requantized : [first, .. requantized.Where(t => t != first)];
        }
        for (int pass = 0; pass < requantized.Length; pass++)
            foreach (int t in order.Select(o => o[pass]).Distinct())
            {
                var pair = formats[t]!.Value;
                var select = tiers.Select((x, h) => order[h][pass] == t ? x.Select(y => y == t).ToArray() : new bool[x.Length]).ToArray();
                if (select.Any(s => s.Any(x => x))) cache.Requantize(ToStorageOrder(cache, ascending, select), pair.Keys, pair.Values);
            }
        var drop = tiers.Select(t => t.Select(x => x != PrecisionTiers.Unchanged && formats[x] is null).ToArray()).ToArray();
        if (drop.Any(d => d.Any(x => x))) cache.Evict(ToStorageOrder(cache, ascending, drop));
        return [.. drop.Select(d => d.Select(x => !x).ToArray())];
    }
}
