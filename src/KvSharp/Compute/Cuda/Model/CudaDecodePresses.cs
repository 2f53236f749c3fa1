using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
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
/// graph. H2O keeps its running sums on the device (<see cref="IRunningAttentionSums"/>: a kernel adds each observed step's
/// statistics, the cut is press_select over the sums' scores, the sums are compacted with the pool), so an observed step
/// reads nothing back and a compression only its drop flags; where a head is not stored in position order (its tokens
/// regrouped by a re-quantization, on the device or before an upload) H2O, and R-KV always, read each observed step's summed probabilities back (at most the press's tokens + every per
/// head) and the session accumulates and scores them on the host exactly as on the CPU (R-KV's raw key redundancy summed
/// on the device, as for the R-KV context press); the eviction runs on the device, all heads in one compaction.
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
/// follow) mapped to ascending position (what the session scores in); R-KV's redundancy summed on the device; H2O's running
/// sums kept on the device when every head is stored in position order (<see cref="StartRunningSums"/>). Each head's
/// positions are kept here and taken again from the cache only after an eviction: between evictions a decode step appends
/// its position to every head (one sequence), so the lists grow in place instead of being rebuilt for every head at every
/// step.
/// </summary>
internal sealed class CudaDecodeCache : IDecodeCache, IRunningAttentionSums
{
    private readonly CudaPagedKvCache _cache;
    private readonly int[][] _ascending; // per head: positions ascending (capacity ≥ count; a rebuild makes new arrays, so views handed out stay true)
    private readonly int[]?[] _order;    // per head: the storage index of each ascending position, null where storage order is ascending
    private readonly int[] _counts;
    private int _syncedLength = -1;      // the cache length the lists describe; −1: take them from the cache

    public CudaDecodeCache(CudaPagedKvCache cache)
    {
        _cache = cache;
        // The session collects at every observed step: the statistics buffers stay allocated between collections (freed with the cache).
        cache.KeepsPressBuffers = true;
        _ascending = new int[cache.HeadCount][];
        _order = new int[cache.HeadCount][];
        _counts = new int[cache.HeadCount];
    }

    public int Layers => _cache.Config.NumLayers;

    public int KvHeads => _cache.Config.NumKvHeads;

    public int HeadDim => _cache.Config.HeadDim;

    public int Length => _cache.Length;

    public int SharedLayerSource(int layer) => -1; // the device cache shares no layer's KV

    public ReadOnlySpan<int> Positions(int layer, int kvHead)
    {
        Sync();
        int h = layer * KvHeads + kvHead;
        return _ascending[h].AsSpan(0, _counts[h]);
    }

    public void BeginStatistics(AttentionStatisticsRequest request) => _cache.BeginStatistics(request);

    public ObservedAttention EndStatistics()
    {
        var (sums, width, counts) = _cache.EndStatisticsSums(); // storage order, the first tokens each head stored when the collection began
        Sync();
        var positions = new ReadOnlyMemory<int>[counts.Length];
        var covered = new ReadOnlyMemory<float>[counts.Length];
        for (int h = 0; h < counts.Length; h++)
        {
            var stored = sums.AsMemory(h * width, counts[h]);
            if (_order[h] is { } order) (positions[h], covered[h]) = Covered(_ascending[h].AsSpan(0, _counts[h]), order.AsSpan(0, _counts[h]), stored.Span);
            else (positions[h], covered[h]) = (_ascending[h].AsMemory(0, counts[h]), stored); // the first stored tokens are the first positions
        }
        return new ObservedAttention(KvHeads, positions, covered);
    }

    public float[][] RawRedundancy(double threshold)
    {
        // On the device in storage order, which is ascending position for every head a prefill, appends and evictions made
        // (press_key_redundancy's "later" is the later stored key); a head stored otherwise (an uploaded or re-quantized
        // cache) is scored on the host from its keys read back in position order.
        var raw = _cache.KeyRedundancy(threshold);
        Sync();
        PagedKvCache? keys = null;
        try
        {
            for (int h = 0; h < raw.Length; h++)
                if (_order[h] != null)
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
        Sync();
        var drop = new bool[_counts.Length][];
        bool any = false;
        for (int h = 0; h < drop.Length; h++)
        {
            var flags = evict[h] ?? new bool[_counts[h]];
            drop[h] = _order[h] is { } order ? ToStorageOrder(flags, order.AsSpan(0, _counts[h])) : flags;
            any |= drop[h].AsSpan().Contains(true);
        }
        _syncedLength = -1;
        if (any) _cache.Evict(drop);
    }

    public IRunningAttentionSums? StartRunningSums()
    {
        Sync();
        // The device's cut protects, windows and breaks ties by stored index, which is position order only in a head stored
        // ascending (a prefill, appends and evictions keep it so; an uploaded or re-quantized cache may not): otherwise the
        // session keeps its sums on the host from the statistics read back.
        if (_order.Any(o => o != null)) return null;
        // One set of sums a cache: a second session over it (the CPU allows one) keeps its sums on the host.
        if (_cache.KeepsRunningSums) return null;
        _cache.StartRunningSums();
        return this;
    }

    public void EndStatisticsIntoSums() => _cache.EndStatisticsIntoRunningSums();

    public (long Evicted, Func<HeadScores> Scores) EvictBySums(int tokens, int protect, int recent)
    {
        Sync();
        int heads = _counts.Length;
        // Per head the stored index of the first candidate (positions below protect stay) and of the window's first position.
        var bounds = new int[2 * heads];
        var counts = new int[heads];
        long before = 0, after = 0;
        for (int h = 0; h < heads; h++)
        {
            var positions = _ascending[h].AsSpan(0, _counts[h]);
            bounds[h] = FirstAtOrAbove(positions, protect);
            bounds[heads + h] = FirstAtOrAbove(positions, recent);
            counts[h] = positions.Length;
            before += positions.Length;
        }
        _cache.EvictByRunningSums(tokens, bounds);
        _syncedLength = -1;
        Sync();
        for (int h = 0; h < heads; h++)
        {
            // An eviction keeps the stored order; a head out of position order now would have its sums misplaced.
            if (_order[h] != null) throw new InvalidOperationException($"head {h} is no longer stored in position order after an eviction by the running sums");
            after += _counts[h];
        }
        return (before - after, () => Scores(counts));
    }

    public void Stop() => _cache.StopRunningSums();

    /// <summary>The last cut's scores as <see cref="HeadScores"/> (storage order = position order: every head is stored ascending).</summary>
    private HeadScores Scores(int[] counts)
    {
        var rows = _cache.RunningScores(counts);
        var scores = new HeadScores(Layers, KvHeads);
        for (int h = 0; h < rows.Length; h++) scores[h / KvHeads, h % KvHeads] = rows[h];
        return scores;
    }

    /// <summary>The index of the first of <paramref name="ascending"/>'s (distinct) positions at or above <paramref name="position"/>.</summary>
    private static int FirstAtOrAbove(ReadOnlySpan<int> ascending, int position)
    {
        int i = ascending.BinarySearch(position);
        return i >= 0 ? i : ~i;
    }

    /// <summary>
    /// Brings each head's positions to the cache's length: appended positions added to every head, or everything taken again
    /// from the cache at the start, after an eviction, or should the cache have shrunk.
    /// </summary>
    private void Sync()
    {
        int length = _cache.Length;
        if (length == _syncedLength) return;
        if (_syncedLength < 0 || length < _syncedLength)
        {
            for (int h = 0; h < _counts.Length; h++)
            {
                var stored = _cache.StoredPositions(h);
                // Taken again after every eviction: a head stored ascending (always, but after an upload) needs no order.
                if (IsAscending(stored)) (_ascending[h], _order[h], _counts[h]) = (stored, null, stored.Length);
                else
                {
                    var (ascending, order) = Ascending(stored);
                    (_ascending[h], _order[h], _counts[h]) = (ascending, order, ascending.Length);
                }
            }
        }
        else
        {
            int added = length - _syncedLength;
            for (int h = 0; h < _counts.Length; h++)
            {
                int count = _counts[h];
                if (_ascending[h].Length < count + added) Array.Resize(ref _ascending[h], Math.Max(count + added, 2 * _ascending[h].Length));
                for (int i = 0; i < added; i++) _ascending[h][count + i] = _syncedLength + i;
                if (_order[h] is { } order)
                {
                    // Appended tokens are stored last and come last in position: their storage indices follow the head's count.
                    if (order.Length < count + added) Array.Resize(ref order, Math.Max(count + added, 2 * order.Length));
                    for (int i = 0; i < added; i++) order[count + i] = count + i;
                    _order[h] = order;
                }
                _counts[h] = count + added;
            }
        }
        _syncedLength = length;
    }

    /// <summary>A head's positions in storage order, sorted, with the storage index of each (an uploaded or re-quantized cache need not store them ascending).</summary>
    internal static (int[] Ascending, int[] Order) Ascending(int[] stored)
    {
        int[] order = [.. Enumerable.Range(0, stored.Length)];
        // A prefill, appends and evictions keep a head's storage ascending: no sort.
        if (IsAscending(stored)) return (stored, order);
        var ascending = (int[])stored.Clone();
        Array.Sort(ascending, order);
        return (ascending, order);
    }

    /// <summary>
    /// The statistics of a head stored out of position order as covered positions and sums, ascending: the covered tokens are
    /// the first <paramref name="storageSums"/>.Length stored (storage order), <paramref name="order"/> the storage index of
    /// each of <paramref name="ascending"/>'s positions (<see cref="Ascending"/>).
    /// </summary>
    internal static (int[] Positions, float[] Sums) Covered(ReadOnlySpan<int> ascending, ReadOnlySpan<int> order, ReadOnlySpan<float> storageSums)
    {
        var positions = new int[storageSums.Length];
        var sums = new float[storageSums.Length];
        for (int k = 0, c = 0; k < ascending.Length; k++)
            if (order[k] < storageSums.Length)
            {
                positions[c] = ascending[k];
                sums[c++] = storageSums[order[k]];
            }
        return (positions, sums);
    }

    private static bool IsAscending(int[] positions)
    {
        for (int i = 1; i < positions.Length; i++)
            if (positions[i] <= positions[i - 1]) return false;
        return true;
    }

    /// <summary>Flags in ascending position as flags in storage order (<paramref name="order"/>: <see cref="Ascending"/>'s storage index of each).</summary>
    internal static bool[] ToStorageOrder(bool[] ascendingFlags, ReadOnlySpan<int> order)
    {
        if (ascendingFlags.Length != order.Length) throw new ArgumentException($"{ascendingFlags.Length} flags for a head storing {order.Length} tokens", nameof(ascendingFlags));
        var stored = new bool[order.Length];
        for (int i = 0; i < order.Length; i++) stored[order[i]] = ascendingFlags[i];
        return stored;
    }
}
