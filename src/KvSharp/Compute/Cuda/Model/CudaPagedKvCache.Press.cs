using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// Compression on the device for <see cref="CudaPagedKvCache"/>: attention statistics accumulated next to each layer's
/// attention (what H2O and SnapKV score by), SnapKV's scoring and per-head top-k selection, and re-quantization of
/// chosen tokens into other block formats, all without reading the cache back to the host.
/// </summary>
public sealed partial class CudaPagedKvCache
{
    private AttentionStatisticsRequest? _statistics;
    private DeviceBuffer? _statMax, _statSum, _covered;

    /// <summary>Whether <see cref="CudaTransformer.Forward"/> calls over this cache currently accumulate attention statistics.</summary>
    public bool IsCollectingStatistics => _statistics != null;

    /// <summary>
    /// Whether the statistics buffers ([heads, capacity] maxima and sums) outlive a collection, for the next one, and an
    /// eviction's scratch (drop flags on both sides, the compacted pool's used part, the staging rows) the next eviction,
    /// until the cache is disposed. A decode press collects at every observed step (H2O: every step) and evicts at every
    /// compression, where allocating and freeing them each time costs more than the step's statistics; a context press
    /// collects and evicts once and frees them.
    /// </summary>
    internal bool KeepsPressBuffers { get; set; }

    /// <summary>
    /// Starts collecting on the device, as <see cref="Cache.Paged.PagedKvCache.BeginStatistics"/> does on the CPU: every
    /// forward pass over this cache adds, for its query rows at position ≥ <see cref="AttentionStatisticsRequest.FirstQueryPosition"/>,
    /// the softmax probability each gives every token each (layer, KV head) stores now (the covered tokens), folded over the
    /// group's heads by <see cref="AttentionStatisticsRequest.Fold"/>: a running maximum and a running sum per token. One
    /// launch after each layer's attention rescores the covered tokens with the attention's keys, each row's log-sum-exp
    /// taken from the attention's per-split (max, sum) (a probability needs its row's final log-sum-exp, known only once
    /// the attention has seen every token). Eviction and re-quantization are refused until the collection ends.
    /// </summary>
    /// <exception cref="InvalidOperationException">Statistics are already being collected.</exception>
    /// <exception cref="KvSharpException">The head dimension is above what the statistics kernels decode.</exception>
    public void BeginStatistics(AttentionStatisticsRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (_statistics != null) throw new InvalidOperationException("attention statistics are already being collected: end the collection first");
        RefuseVidKv("attention statistics");
        if (Config.HeadDim > CudaPagedKernels.StatsMaxHeadDim)
            throw new KvSharpException($"attention statistics on the GPU take head dimensions up to {CudaPagedKernels.StatsMaxHeadDim}, not {Config.HeadDim}");
        if (request.FirstQueryPosition < 0) throw new ArgumentOutOfRangeException(nameof(request), $"FirstQueryPosition must be ≥ 0, got {request.FirstQueryPosition}");
        long perHead = (long)MaxBlocks * BlockTokens;
        _statMax ??= Device.Allocate(HeadCount * perHead * sizeof(float));
        _statSum ??= Device.Allocate(HeadCount * perHead * sizeof(float));
        _covered ??= Device.Allocate(HeadCount * sizeof(int));
        _statMax.Fill32(0);
        _statSum.Fill32(0);
        _covered.CopyFromAsync(_headTokens, HeadCount * sizeof(int));
        _statistics = request;
    }

    /// <summary>
    /// Ends the collection and reads the statistics back: per head [<see cref="HeadIndex"/>] (layer · kvHeads + head at batch 1), the covered tokens' maximum and
    /// summed folded probability, in the device's storage order (an uploaded cache's blocks, then its tail, then appends).
    /// </summary>
    /// <exception cref="InvalidOperationException">No collection is in progress.</exception>
    public (float[][] Max, float[][] Sum) EndStatistics()
    {
        var (max, sum, covered) = (_statMax, _statSum, _covered);
        if (_statistics == null || max == null || sum == null || covered == null)
            throw new InvalidOperationException("no attention statistics are being collected: call BeginStatistics first");
        Device.Synchronize();
        var counts = new int[HeadCount];
        covered.Download<int>(counts);
        var maxOut = DownloadHeads(max, counts);
        var sumOut = DownloadHeads(sum, counts);
        StopStatistics();
        return (maxOut, sumOut);
    }

    /// <summary>
    /// <see cref="EndStatistics"/>'s sums alone (what a decode press scores by, read back at every observed step), packed:
    /// head h's covered values are <c>Sums[h · Width ..][..Counts[h]]</c>, storage order.
    /// </summary>
    /// <exception cref="InvalidOperationException">No collection is in progress.</exception>
    internal (float[] Sums, int Width, int[] Counts) EndStatisticsSums()
    {
        var (sum, covered) = (_statSum, _covered);
        if (_statistics == null || sum == null || covered == null)
            throw new InvalidOperationException("no attention statistics are being collected: call BeginStatistics first");
        Device.Synchronize();
        var counts = new int[HeadCount];
        covered.Download<int>(counts);
        var (packed, width) = DownloadPacked(sum, counts);
        StopStatistics();
        return (packed, width, counts);
    }

    /// <summary>
    /// The first <paramref name="counts"/>[h] values of each head's row of <paramref name="perHead"/> [HeadCount, MaxBlocks ·
    /// BlockTokens]: one strided copy of every head's first max(counts) values (a decode press reads its statistics back at
    /// every observed step; a copy per head cost a round trip each, 2 · HeadCount a step).
    /// </summary>
    private float[][] DownloadHeads(DeviceBuffer perHead, int[] counts)
    {
        var (packed, width) = DownloadPacked(perHead, counts);
        var result = new float[counts.Length][];
        for (int h = 0; h < counts.Length; h++) result[h] = packed.AsSpan(h * width, counts[h]).ToArray();
        return result;
    }

    /// <summary><see cref="DownloadHeads"/>' one strided copy: head h's values at [h · Width, h · Width + counts[h]).</summary>
    private (float[] Packed, int Width) DownloadPacked(DeviceBuffer perHead, int[] counts)
    {
        long pitch = (long)MaxBlocks * BlockTokens * sizeof(float);
        int width = counts.Length == 0 ? 0 : counts.Max();
        var packed = new float[(long)width * counts.Length];
        perHead.Download2D<float>(packed, 0, pitch, width, counts.Length);
        return (packed, width);
    }

    /// <summary>
    /// SnapKV on the device from the statistics being collected (the observation window's queries over the covered
    /// tokens, <see cref="GroupFold.Mean"/> as <c>SnapKvScorer</c> asks): each head's summed probabilities are pooled
    /// along its stored tokens (odd <paramref name="kernel"/>, zero padding; "avg" divides by the kernel, "max"), the tokens
    /// stored after collection began (the window) score +∞, and each head keeps its <paramref name="keep"/>[head] best
    /// candidates (tokens from <paramref name="protectedPrefix"/> on; ties to the later token, as <c>TopK.KeepMask</c>),
    /// every +∞ token and the protected prefix; the rest is evicted on the device. Ends the collection. Heads are indexed by
    /// <see cref="HeadIndex"/> (see the per-sequence overload for a batch cache).
    /// Returns the drop flags per head in storage order (for bookkeeping; the decision was made on the device).
    /// </summary>
    /// <exception cref="InvalidOperationException">No collection is in progress.</exception>
    /// <exception cref="KvSharpException">A parameter is out of range.</exception>
    public bool[][] SnapKvEvict(int kernel, string pool, IReadOnlyList<int> keep, int protectedPrefix = 0)
    {
        ArgumentNullException.ThrowIfNull(keep);
        if (keep.Count != HeadCount) throw new KvSharpException($"snapkv: {keep.Count} keep counts for {HeadCount} heads");
        if (protectedPrefix < 0) throw new KvSharpException($"snapkv: protected prefix {protectedPrefix} is negative");
        using var scores = SnapKvScoreBuffer(kernel, pool);
        return SelectAndEvict(scores, keep, protectedPrefix);
    }

    /// <summary>
    /// Per head, keeps the <paramref name="keep"/>[head] best-scoring candidates after the protected prefix (TopK.KeepMask's
    /// order), every +∞ token and the prefix, evicts the rest on the device and ends the collection; returns the drop flags
    /// per head in storage order.
    /// </summary>
    private bool[][] SelectAndEvict(DeviceBuffer scores, IReadOnlyList<int> keep, int protectedPrefix)
    {
        int maxTokens = MaxBlocks * BlockTokens;
        using var keepCounts = Device.Allocate(HeadCount * sizeof(int));
        using var protect = Device.Allocate(HeadCount * sizeof(int));
        using var drop = Device.Allocate((long)HeadCount * maxTokens);
        keepCounts.Upload<int>(keep.ToArray());
        protect.Upload<int>(Enumerable.Repeat(protectedPrefix, HeadCount).ToArray());
        _kernels.Select(scores.Pointer, _headTokens.Pointer, keepCounts.Pointer, protect.Pointer, drop.Pointer, HeadCount, maxTokens);
        var lengths = HeadLengths();
        var flags = new byte[(long)HeadCount * maxTokens];
        drop.Download<byte>(flags);
        StopStatistics();
        EvictOnDevice(drop, flags);
        return Enumerable.Range(0, HeadCount).Select(h => Enumerable.Range(0, lengths[h]).Select(i => flags[(long)h * maxTokens + i] != 0).ToArray()).ToArray();
    }

    /// <summary>
    /// <see cref="SnapKvEvict(int, string, IReadOnlyList{int}, int)"/> of one sequence of the batch: the statistics come from
    /// that sequence's observation window (a <see cref="CudaTransformer.Forward"/> call for it while collecting),
    /// <paramref name="keep"/>[layer · kvHeads + head] counts its heads' kept candidates, and the other sequences keep every
    /// token. Returns the drop flags of the sequence's heads (layer · kvHeads + head, storage order). Ends the collection.
    /// </summary>
    /// <exception cref="InvalidOperationException">No collection is in progress.</exception>
    /// <exception cref="KvSharpException">The sequence or a parameter is out of range.</exception>
    public bool[][] SnapKvEvict(int sequence, int kernel, string pool, IReadOnlyList<int> keep, int protectedPrefix = 0) =>
        EvictOneSequence("snapkv", sequence, keep, all => SnapKvEvict(kernel, pool, all, protectedPrefix));

    /// <summary>
    /// A whole-cache press (<paramref name="evict"/>, given every head's keep count) applied to one sequence of the batch:
    /// that sequence's heads keep <paramref name="keep"/>[layer · kvHeads + head], the other sequences' heads keep all they
    /// store. Returns the drop flags of the sequence's heads, in the same order.
    /// </summary>
    private bool[][] EvictOneSequence(string press, int sequence, IReadOnlyList<int> keep, Func<int[], bool[][]> evict)
    {
        ArgumentNullException.ThrowIfNull(keep);
        if ((uint)sequence >= (uint)Batch) throw new KvSharpException($"{press}: sequence {sequence} is outside the cache's batch of {Batch}");
        int kvHeads = Config.NumKvHeads, perSequence = Config.NumLayers * kvHeads;
        if (keep.Count != perSequence) throw new KvSharpException($"{press}: {keep.Count} keep counts for the {perSequence} heads of a sequence");
        var all = HeadLengths();
        for (int i = 0; i < perSequence; i++) all[HeadIndex(i / kvHeads, sequence, i % kvHeads)] = keep[i];
        var drops = evict(all);
        return Enumerable.Range(0, perSequence).Select(i => drops[HeadIndex(i / kvHeads, sequence, i % kvHeads)]).ToArray();
    }

    /// <summary>
    /// Re-encodes the stored tokens flagged in <paramref name="select"/>[<see cref="HeadIndex"/>] (one flag per stored token, in
    /// the device's storage order) in <paramref name="keyFormat"/> / <paramref name="valueFormat"/>, on the device, as
    /// <see cref="Cache.Paged.PagedKvCache.Requantize"/> does on the CPU (MiKV, ZipVL, LeanKV: mixed precision by token):
    /// blocks without a flagged token, or already in the target formats, stay; the other blocks' tokens are regrouped by
    /// format pair into dense blocks (flagged ones in the target formats, the others in their own), in storage order, a
    /// kept partial block of a pair being written joining it; flagged residual rows join the target's blocks. The pool is
    /// compacted into its own allocation (captured decode graphs stay valid). The host replays the regrouping on the
    /// tokens' positions, so later masks, <see cref="Download"/> and presses still know where each token is.
    /// </summary>
    /// <exception cref="ArgumentException">A mask's length is not its head's stored token count.</exception>
    /// <exception cref="KvSharpException">A format the device does not read (VidKV), a value format whose groups do not fit the cache's,
    /// or a head whose regrouped blocks exceed its descriptor table or the pool (the cache is then left as it was).</exception>
    /// <exception cref="InvalidOperationException">Statistics are being collected, or a decode press keeps running sums (<see cref="StartRunningSums"/>).</exception>
    public void Requantize(IReadOnlyList<bool[]> select, KvFormat keyFormat, KvFormat valueFormat)
    {
        ArgumentNullException.ThrowIfNull(select);
        if (_statistics != null) throw new InvalidOperationException("cannot re-quantize while attention statistics are being collected");
        RefuseRunningSums("re-quantize");
        if (keyFormat.IsVidKv() || valueFormat.IsVidKv()) throw new KvSharpException(VidKvRefusal($"re-quantization into {keyFormat} / {valueFormat}"));
        RefuseVidKv("re-quantization");
        if (select.Count != HeadCount) throw new ArgumentException($"{select.Count} masks for {HeadCount} heads", nameof(select));
        var lengths = HeadLengths();
        int maxTokens = MaxBlocks * BlockTokens, hd = Config.HeadDim;
        var flags = new byte[(long)HeadCount * maxTokens];
        for (int h = 0; h < HeadCount; h++)
        {
            if (select[h].Length != lengths[h]) throw new ArgumentException($"head {h}'s mask has {select[h].Length} flags but the head stores {lengths[h]} tokens", nameof(select));
            for (int i = 0; i < lengths[h]; i++) flags[(long)h * maxTokens + i] = select[h][i] ? (byte)1 : (byte)0;
        }
        LayoutOf(keyFormat, true);
        LayoutOf(valueFormat, false); // throws for a geometry the cache cannot hold
        var (tables, tableBlocks, _) = DownloadTables();
        var positions = RequantizedPositions(flags, tables, tableBlocks, (int)keyFormat | (int)valueFormat << 4);
        NoteFormats(keyFormat, valueFormat); // before any plan over the new blocks (a graph captured earlier is re-captured: its plan changes)
        _layoutVersion++;
        using var deviceFlags = Device.Allocate(flags.Length);
        deviceFlags.Upload<byte>(flags);
        using var fresh = Device.Allocate(PoolUnits * 16);
        using var staging = Device.Allocate((long)HeadCount * 2 * BlockTokens * hd * sizeof(float));
        using var oldDesc = Device.Allocate(_desc.ByteLength);
        using var oldBlocks = Device.Allocate(_headBlocks.ByteLength);
        using var classes = Device.Allocate((long)HeadCount * MaxBlocks);
        oldDesc.CopyFromAsync(_desc, _desc.ByteLength);
        oldBlocks.CopyFromAsync(_headBlocks, _headBlocks.ByteLength);
        var state = new int[2];
        _state.Download<int>(state);
        _state.Upload<int>([ReservedUnits, 0]);
        _kernels.Requantize(_pool.Pointer, fresh.Pointer, oldDesc.Pointer, _desc.Pointer, _headBlocks.Pointer, deviceFlags.Pointer, classes.Pointer,
            staging.Pointer, _state.Pointer, _state.Pointer + 4, PoolUnits, HeadCount, MaxBlocks, maxTokens, BlockTokens, hd, ValueGroup,
            (int)keyFormat, (int)valueFormat);
        Device.Synchronize();
        try
        {
            CheckDeviceState();
        }
        catch (KvSharpException)
        {
            // A head that did not fit its table (or the pool): the old tables still describe the untouched pool.
            _desc.CopyFromAsync(oldDesc, _desc.ByteLength);
            _headBlocks.CopyFromAsync(oldBlocks, _headBlocks.ByteLength);
            _state.Upload<int>(state);
            throw;
        }
        var top = new int[1];
        _state.Download<int>(top);
        _pool.CopyFromAsync(fresh, (long)(uint)top[0] * 16);
        Device.Synchronize();
        Resync();
        SetPositions(positions);
    }

    /// <summary>Queues the statistics of one layer's attention rows (after the attention launch), when collecting.</summary>
    private void EnqueueStatistics(in LayerAttention a)
    {
        if (_statistics is not { } request) return;
        // A decode graph is captured once per cache and replayed: launches captured while collecting would keep writing the
        // statistics buffers after the collection ends (they are freed), and a replayed step cannot decide on the host whether
        // its row is counted. Presses observe through Forward calls (SnapKV's window, H2O's prefill chunks).
        if (a.Batch)
            throw new KvSharpException("attention statistics on the GPU are collected by Forward calls, not inside captured graph decode (the captured launches would outlive the collection)");
        EnqueueStatistics(a.Layer, a.Q, a.PartMl, a.Plan.Splits, a.Rows, Math.Max(0, request.FirstQueryPosition - LengthOf(a.Sequence)), a.Sequence, a.Hidden);
    }

    /// <summary>
    /// Queues the statistics of query rows q [rows, heads, hd] (rotated) of <paramref name="layer"/>, the last rows of the
    /// heads' storage (row t sees all but the last rows-1-t stored tokens), right after the attention launch over them that
    /// left each row's per-split (max, sum) in <paramref name="partMl"/> ([rows, heads, <paramref name="splits"/>]); rows
    /// before <paramref name="firstCounted"/> are not counted. Does nothing when no collection is in progress. The heads
    /// are <paramref name="sequence"/>'s; <paramref name="hidden"/> is the rows' layer input [rows, hidden size] (0 when not
    /// known), which a KVzip+ collection weighs by.
    /// </summary>
    private void EnqueueStatistics(int layer, ulong q, ulong partMl, int splits, int rows, int firstCounted, int sequence, ulong hidden = 0)
    {
        if (_statistics is not { } request || _statMax == null || _statSum == null || _covered == null) return;
        var c = Config;
        int maxTokens = MaxBlocks * BlockTokens;
        var (desc, blocks, tokens) = LayerTables(layer, sequence);
        long head0 = HeadIndex(layer, sequence, 0);
        var target = new CudaPagedKernels.StatsTarget(_pool.Pointer, desc, blocks, tokens, _covered.Pointer + (ulong)(head0 * sizeof(int)),
            _statMax.Pointer + (ulong)(head0 * maxTokens * sizeof(float)), _statSum.Pointer + (ulong)(head0 * maxTokens * sizeof(float)),
            MaxBlocks, maxTokens, BlockTokens, ValueGroup);
        target = Weighted(target, layer, hidden, rows);
        // A head stores at most the positions appended before this call, and covers at most what it stores.
        _kernels.Statistics(q, partMl, splits, target, rows, firstCounted, request.Fold == GroupFold.Mean ? 1 : 0, c.NumHeads, c.NumKvHeads, c.HeadDim,
            Math.Min(LengthOf(sequence), maxTokens));
    }

    /// <summary>
    /// Attention of query rows q [rows, heads, hd] (rotated) of <paramref name="layer"/> over the heads' stored tokens, the
    /// rows being the last ones stored (row t sees all but the last rows-1-t), without appending: the output is dropped,
    /// and while collecting, the statistics of rows from <paramref name="firstCounted"/> on are queued after it (what a
    /// <see cref="CudaTransformer.Forward"/> over this cache does per layer; checks feed it chosen queries).
    /// </summary>
    internal void AttendForStatistics(int layer, ulong q, int rows, int firstCounted, int sequence = 0)
    {
        var c = Config;
        var plan = PlanAttention(LengthOf(sequence), rows);
        long parts = (long)rows * c.NumHeads * plan.Splits;
        using var output = Device.Allocate((long)rows * c.NumHeads * c.HeadDim * sizeof(float));
        using var partOut = Device.Allocate(parts * c.HeadDim * sizeof(float));
        using var partMl = Device.Allocate(parts * 2 * sizeof(float));
        using var counters = Device.Allocate((long)rows * c.NumKvHeads * sizeof(int));
        counters.Fill32(0);
        var (desc, blocks, tokens) = LayerTables(layer, sequence);
        _kernels.Attention(q, _pool.Pointer, desc, blocks, tokens, output.Pointer, partOut.Pointer, partMl.Pointer, counters.Pointer, rows, c.NumHeads,
            c.NumKvHeads, c.HeadDim, MaxBlocks, BlockTokens, ValueGroup, plan, AttentionKernel, vid: VidKvTables);
        EnqueueStatistics(layer, q, partMl.Pointer, plan.Splits, rows, firstCounted, sequence);
        Device.Synchronize(); // the scratch buffers go
    }

    /// <summary>
    /// Ends the collection on the device: every head's maxima of stored tokens [<paramref name="start"/>, <paramref name="end"/>)
    /// go to the same places of <paramref name="scores"/> [HeadCount, MaxBlocks · BlockTokens] (KVzip: one repeat run's chunk).
    /// </summary>
    internal void EndStatisticsInto(DeviceBuffer scores, int start, int end)
    {
        if (_statistics == null || _statMax == null) throw new InvalidOperationException("no attention statistics are being collected: call BeginStatistics first");
        _kernels.TakeRange(_statMax.Pointer, scores.Pointer, HeadCount, MaxBlocks * BlockTokens, start, end);
        Device.Synchronize(); // before the statistics buffers are freed
        StopStatistics();
    }

    /// <summary>Ends a collection without reading it (frees its buffers).</summary>
    internal void StopStatistics()
    {
        _statistics = null;
        _coverEachForward = false;
        _rowNorms?.Dispose();
        (_rowNorms, _valueNorms) = (null, null);
        if (KeepsPressBuffers) return; // the next collection fills them again
        foreach (var b in new[] { _statMax, _statSum, _covered }) b?.Dispose();
        (_statMax, _statSum, _covered) = (null, null, null);
    }
}
