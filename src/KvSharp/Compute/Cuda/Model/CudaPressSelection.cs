using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;

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

    /// <summary>Refuses what is not a fresh prefill of <paramref name="tokens"/> (storage index = position in every head).</summary>
    public static void CheckFresh(string press, CudaPagedKvCache cache, IReadOnlyList<int> tokens, int protectedPrefix)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(tokens);
        int length = tokens.Count;
        if (cache.Batch != 1) throw new KvSharpException($"{press} on the GPU presses a cache of one sequence, not {cache.Batch}");
        if (cache.Length != length) throw new KvSharpException($"{press}: the cache holds {cache.Length} positions but {length} tokens were given");
        if (protectedPrefix < 0 || protectedPrefix > length) throw new KvSharpException($"{press}: protected prefix {protectedPrefix} outside 0..{length}");
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
    /// Chooses as <see cref="ScoredPress.Select(PressContext)"/> does from <paramref name="scores"/> of a fresh prefill
    /// (the protected prefix kept outside the budget, the budget's count of best candidates per head, every +∞ one, ties to
    /// the later token) and evicts the rest on the device. Returns the keep flags per head.
    /// </summary>
    public static bool[][] KeepAndEvict(CudaPagedKvCache cache, IBudget budget, HeadScores scores, int protectedPrefix)
    {
        var candidates = new HeadScores(scores.Layers, scores.KvHeads);
        for (int i = 0; i < scores.HeadCount; i++) candidates[i / scores.KvHeads, i % scores.KvHeads] = scores[i][protectedPrefix..];
        var keep = ScoredPress.KeepMasks(budget, candidates, Enumerable.Repeat(protectedPrefix, scores.HeadCount).ToArray());
        cache.Evict(keep.Select(k => k.Select(x => !x).ToArray()).ToArray());
        return keep;
    }
}
