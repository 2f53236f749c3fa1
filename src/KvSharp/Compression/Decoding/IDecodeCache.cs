using KvSharp.Compression.Scorers;
using KvSharp.Cache;
using KvSharp.Cache.Paged;

namespace KvSharp.Compression.Decoding;

/// <summary>
/// What a decode press needs of the cache it compresses: the CPU's <see cref="PagedKvCache"/> and the device's paged
/// cache (<c>CudaDecodeCache</c>) both present it, so one session code scores and chooses for both and the device keeps
/// exactly the tokens the CPU keeps from the same statistics. Heads are indexed layer · <see cref="KvHeads"/> + KV head;
/// every per-token list is in ascending position.
/// </summary>
internal interface IDecodeCache
{
    int Layers { get; }

    int KvHeads { get; }

    int HeadDim { get; }

    /// <summary>Tokens appended so far (the next token's position).</summary>
    int Length { get; }

    /// <summary>The layer whose KV <paramref name="layer"/> reads (≥ 0), or −1 when it stores its own.</summary>
    int SharedLayerSource(int layer);

    /// <summary>The positions a head stores, ascending (valid until the cache changes: an append or an eviction).</summary>
    ReadOnlySpan<int> Positions(int layer, int kvHead);

    /// <summary>Starts collecting attention statistics (<see cref="PagedKvCache.BeginStatistics"/>'s meaning).</summary>
    void BeginStatistics(AttentionStatisticsRequest request);

    /// <summary>Ends the collection: per head the covered positions and their summed folded probability, ascending.</summary>
    ObservedAttention EndStatistics();

    /// <summary>
    /// R-KV's raw redundancy of every head's stored keys (<see cref="RkvScorer.RawRedundancy"/>: per key the sum of its cosine
    /// similarities above <paramref name="threshold"/> with the later keys, over n − 1), per head in <see cref="Positions"/>' order.
    /// </summary>
    float[][] RawRedundancy(double threshold);

    /// <summary>Evicts per head the flagged tokens (<see cref="Positions"/>' order; null = keep all), all heads at once.</summary>
    void Evict(IReadOnlyList<bool[]?> evict);

    /// <summary>
    /// Starts H2O's running sums kept by the cache itself (<see cref="IRunningAttentionSums"/>), or null when the session is
    /// to keep them (the CPU's cache: its statistics are already on the host; a device cache storing a head out of position order).
    /// </summary>
    IRunningAttentionSums? StartRunningSums();
}

/// <summary>
/// H2O's running sums kept by the cache, next to its statistics (the device's, <c>CudaDecodeCache</c>), so that an observed
/// step reads nothing back: the cache adds each step's summed probability to every covered stored token's sum (float64, the
/// same additions as <see cref="H2oDecodePress"/>'s session makes), compacts the sums with its evictions and cuts the heads by
/// them with the session's rule. The session keeps the method's schedule, budget test and counts; this is the seam where its
/// accumulation, scores and cut move to the cache (the method's rule is restated in the device's kernels: see docs/cuda.md).
/// </summary>
internal interface IRunningAttentionSums
{
    /// <summary>Ends the statistics collection, adding each covered token's summed probability to its running sum.</summary>
    void EndStatisticsIntoSums();

    /// <summary>
    /// Scores every stored token by its running sum as a float, +∞ at positions ≥ <paramref name="recent"/>; each head holding
    /// more than <paramref name="tokens"/> candidates (positions ≥ <paramref name="protect"/>) keeps its <paramref name="tokens"/>
    /// best as <c>TopK.KeepMask</c> ranks them (ties to the later token, every +∞ kept) and evicts the others, all heads at
    /// once. Returns the tokens evicted and a read of the scores (per head in <see cref="IDecodeCache.Positions"/>' order before
    /// the eviction; valid until the next cut or <see cref="Stop"/>).
    /// </summary>
    (long Evicted, Func<HeadScores> Scores) EvictBySums(int tokens, int protect, int recent);

    /// <summary>Stops keeping the sums (frees them).</summary>
    void Stop();
}

/// <summary>
/// The part of <see cref="AttentionStatistics"/> decode presses score by: per head the covered positions and summed
/// probabilities (views: the device's are slices of one read-back and of the cache's own position lists).
/// </summary>
internal sealed class ObservedAttention(int kvHeads, ReadOnlyMemory<int>[] positions, ReadOnlyMemory<float>[] sums)
{
    /// <summary>The covered positions of a head, ascending.</summary>
    public ReadOnlySpan<int> Positions(int layer, int kvHead) => positions[layer * kvHeads + kvHead].Span;

    /// <summary>The summed folded probability of each covered position.</summary>
    public ReadOnlySpan<float> SumProbability(int layer, int kvHead) => sums[layer * kvHeads + kvHead].Span;
}

/// <summary>The CPU's <see cref="PagedKvCache"/> as a decode press sees it (its Positions are ascending in storage order: blocks, then the tail).</summary>
internal sealed class PagedDecodeCache(PagedKvCache cache) : IDecodeCache
{
    public int Layers => cache.Layers;

    public int KvHeads => cache.KvHeads;

    public int HeadDim => cache.HeadDim;

    public int Length => cache.Length;

    public int SharedLayerSource(int layer) => cache.SharedLayerSource(layer);

    public ReadOnlySpan<int> Positions(int layer, int kvHead) => cache.PositionSpan(layer, kvHead);

    public void BeginStatistics(AttentionStatisticsRequest request) => cache.BeginStatistics(request);

    public ObservedAttention EndStatistics()
    {
        var stats = cache.EndStatistics();
        int heads = stats.Layers * stats.KvHeads;
        var positions = new ReadOnlyMemory<int>[heads];
        var sums = new ReadOnlyMemory<float>[heads];
        for (int i = 0; i < heads; i++)
        {
            positions[i] = stats.Positions(i / stats.KvHeads, i % stats.KvHeads).ToArray();
            sums[i] = stats.SumProbability(i / stats.KvHeads, i % stats.KvHeads).ToArray();
        }
        return new ObservedAttention(stats.KvHeads, positions, sums);
    }

    public float[][] RawRedundancy(double threshold)
    {
        var raw = new float[cache.Layers * cache.KvHeads][];
        for (int h = 0; h < raw.Length; h++) raw[h] = RkvScorer.RawRedundancy(cache.ReadKeys(h / cache.KvHeads, h % cache.KvHeads), cache.HeadDim, threshold);
        return raw;
    }

    public void Evict(IReadOnlyList<bool[]?> evict)
    {
        for (int i = 0; i < evict.Count; i++)
            if (evict[i] is { } flags) cache.Evict(i / cache.KvHeads, i % cache.KvHeads, flags);
    }

    public IRunningAttentionSums? StartRunningSums() => null; // the statistics are on the host already: the session sums them
}
