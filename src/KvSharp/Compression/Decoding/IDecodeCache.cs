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
}
