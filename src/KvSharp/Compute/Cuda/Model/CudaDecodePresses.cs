using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Decoding;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Scorers;
using KvSharp.Generation;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// Decode-time compression (<c>--decode-press</c>: H2O during decoding, R-KV) over a <see cref="CudaPagedKvCache"/>. The
/// CPU press's own session runs over the device cache (<see cref="IDecodeCache"/>): the decode steps it observes run with
/// the attention statistics collected on the device (<see cref="CudaTransformer.ForwardSample"/> leaves the captured graph
/// for those steps: a statistics launch captured into the graph would outlive its collection), the other steps keep the
/// graph; each observed step's summed probabilities per stored token come back (at most the press's tokens + every per
/// head), the session accumulates and scores them on the host exactly as on the CPU (R-KV's raw key redundancy summed on
/// the device, as for the R-KV context press), and the eviction runs on the device, all heads in one compaction.
/// </summary>
public static class CudaDecodePresses
{
    /// <summary>Refuses, in one line, a decode-time compression the device does not run (anything but the CPU's decode presses).</summary>
    /// <exception cref="KvSharpException">The method is not one of <c>DecodePressRegistry</c>'s.</exception>
    public static void Check(IDecodeCompression compression)
    {
        ArgumentNullException.ThrowIfNull(compression);
        // Every decode press runs its session over IDecodeCache, so every one the registry builds runs on the device.
        if (compression is not DecodePress)
            throw new KvSharpException($"decode press '{compression.Text}' does not run on the GPU: the device runs the decode presses " +
                string.Join(", ", DecodePressRegistry.Presses.Select(p => p.Name)));
    }

    /// <summary>
    /// Starts <paramref name="compression"/> over <paramref name="cache"/> (one sequence, the prompt prefilled): the session
    /// to tell about every decode step, as <see cref="IDecodeCompression.Start"/> on the CPU.
    /// </summary>
    /// <exception cref="KvSharpException">The method is not a decode press the device runs, or the cache holds several sequences or VidKV blocks.</exception>
    public static IDecodeSession Start(IDecodeCompression compression, CudaPagedKvCache cache)
    {
        Check(compression);
        ArgumentNullException.ThrowIfNull(cache);
        if (cache.Batch != 1) throw new KvSharpException($"decode press '{compression.Text}' on the GPU compresses a cache of one sequence, not {cache.Batch}");
        // Refused here rather than at the first observed or compressing step, after output has started.
        if (cache.HoldsVidKv)
            throw new KvSharpException($"decode press '{compression.Text}' on the GPU evicts tokens, which the device does not do in a cache holding VidKV blocks");
        return ((DecodePress)compression).CreateSession(new CudaDecodeCache(cache));
    }
}

/// <summary>
/// <see cref="CudaPagedKvCache"/> as a decode press sees it: the device's storage order (what eviction flags and statistics
/// follow) mapped to ascending position (what the session scores in); R-KV's redundancy summed on the device.
/// </summary>
internal sealed class CudaDecodeCache : IDecodeCache
{
    private readonly CudaPagedKvCache _cache;
    private int[][]? _ascending, _order; // per head: positions ascending, and the storage index of each
    private int _orderLength = -1;

    public CudaDecodeCache(CudaPagedKvCache cache)
    {
        _cache = cache;
        // The session collects at every observed step: the statistics buffers stay allocated between collections (freed with the cache).
        cache.KeepsStatisticsBuffers = true;
    }

    public int Layers => _cache.Config.NumLayers;

    public int KvHeads => _cache.Config.NumKvHeads;

    public int HeadDim => _cache.Config.HeadDim;

    public int Length => _cache.Length;

    public int SharedLayerSource(int layer) => -1; // the device cache shares no layer's KV

    public IReadOnlyList<int> Positions(int layer, int kvHead) => Ordered().Ascending[layer * KvHeads + kvHead];

    public void BeginStatistics(AttentionStatisticsRequest request) => _cache.BeginStatistics(request);

    public ObservedAttention EndStatistics()
    {
        var (_, sums) = _cache.EndStatistics(); // storage order, the first tokens each head stored when the collection began
        var positions = new int[sums.Length][];
        for (int h = 0; h < sums.Length; h++) (positions[h], sums[h]) = Covered(_cache.StoredPositions(h), sums[h]);
        return new ObservedAttention(KvHeads, positions, sums);
    }

    public float[][] RawRedundancy(double threshold)
    {
        // On the device in storage order, which is ascending position for every head a prefill, appends and evictions made
        // (press_key_redundancy's "later" is the later stored key); a head stored otherwise (an uploaded or re-quantized
        // cache) is scored on the host from its keys read back in position order.
        var raw = _cache.KeyRedundancy(threshold);
        var order = Ordered().Order;
        PagedKvCache? keys = null;
        try
        {
            for (int h = 0; h < raw.Length; h++)
                if (!IsIdentity(order[h]))
                {
                    keys ??= _cache.Download();
                    raw[h] = RkvScorer.RawRedundancy(keys.ReadKeys(h / KvHeads, h % KvHeads), HeadDim, threshold);
                }
        }
        finally
        {
            keys?.Dispose();
        }
        return raw;
    }

    public void Evict(IReadOnlyList<bool[]?> evict)
    {
        var (ascending, order) = Ordered();
        var drop = new bool[ascending.Length][];
        bool any = false;
        for (int h = 0; h < drop.Length; h++)
        {
            drop[h] = evict[h] is { } flags ? ToStorageOrder(flags, order[h]) : new bool[ascending[h].Length];
            any |= drop[h].Contains(true);
        }
        _orderLength = -1;
        if (any) _cache.Evict(drop);
    }

    /// <summary>Each head's positions ascending and their storage indices, taken again after an append or an eviction.</summary>
    private (int[][] Ascending, int[][] Order) Ordered()
    {
        if (_ascending == null || _order == null || _orderLength != _cache.Length)
        {
            _ascending = new int[_cache.HeadCount][];
            _order = new int[_cache.HeadCount][];
            for (int h = 0; h < _cache.HeadCount; h++) (_ascending[h], _order[h]) = Ascending(_cache.StoredPositions(h));
            _orderLength = _cache.Length;
        }
        return (_ascending, _order);
    }

    /// <summary>A head's positions in storage order, sorted, with the storage index of each (an uploaded or re-quantized cache need not store them ascending).</summary>
    internal static (int[] Ascending, int[] Order) Ascending(int[] stored)
    {
        int[] order = [.. Enumerable.Range(0, stored.Length)];
        // A prefill, appends and evictions keep a head's storage ascending: no sort, which taken again for every head after each
        // step's append cost the most of a step's host work (256 heads of ~520 tokens at the KV shape of Llama-3.1-8B).
        if (IsAscending(stored)) return ((int[])stored.Clone(), order);
        var ascending = (int[])stored.Clone();
        Array.Sort(ascending, order);
        return (ascending, order);
    }

    /// <summary>The statistics of a head's first <paramref name="sums"/>.Length stored tokens (storage order) as covered positions and sums, ascending.</summary>
    internal static (int[] Positions, float[] Sums) Covered(int[] stored, float[] sums)
    {
        var positions = stored[..sums.Length];
        var sorted = (float[])sums.Clone();
        if (!IsAscending(positions)) Array.Sort(positions, sorted);
        return (positions, sorted);
    }

    private static bool IsIdentity(int[] order)
    {
        for (int i = 0; i < order.Length; i++)
            if (order[i] != i) return false;
        return true;
    }

    private static bool IsAscending(int[] positions)
    {
        for (int i = 1; i < positions.Length; i++)
            if (positions[i] <= positions[i - 1]) return false;
        return true;
    }

    /// <summary>Flags in ascending position as flags in storage order (<paramref name="order"/>: <see cref="Ascending"/>'s storage index of each).</summary>
    internal static bool[] ToStorageOrder(bool[] ascendingFlags, int[] order)
    {
        if (ascendingFlags.Length != order.Length) throw new ArgumentException($"{ascendingFlags.Length} flags for a head storing {order.Length} tokens", nameof(ascendingFlags));
        var stored = new bool[order.Length];
        for (int i = 0; i < order.Length; i++) stored[order[i]] = ascendingFlags[i];
        return stored;
    }
}
