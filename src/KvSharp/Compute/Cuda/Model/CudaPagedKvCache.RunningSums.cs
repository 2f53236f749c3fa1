using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// H2O's decode press on the device (<see cref="CudaDecodeCache"/>): a running sum per stored token of every head, added by a
/// kernel from each observed step's statistics, compacted with the pool at every eviction, and the per-head cut made on the
/// device from it, so that a step leaves nothing for the host but the eviction's bookkeeping.
/// </summary>
public sealed partial class CudaPagedKvCache
{
    // [HeadCount, MaxBlocks · BlockTokens] doubles in storage order, zero past each head's stored tokens (an append lands on
    // a zero: the new token's sum starts at 0, as the CPU session's); the cut's scores, per-head bounds and keep counts.
    private DeviceBuffer? _runningSums, _runningScores, _runningBounds, _runningKeep;

    /// <summary>Whether this cache keeps H2O's running sums (between <see cref="StartRunningSums"/> and <see cref="StopRunningSums"/>).</summary>
    internal bool KeepsRunningSums => _runningSums != null;

    /// <summary>
    /// Starts the running sums at zero for every stored token. From here until <see cref="StopRunningSums"/> every eviction
    /// compacts them, and what would reorder the storage otherwise (re-quantization, restoring a checkpoint) is refused.
    /// </summary>
    /// <exception cref="InvalidOperationException">The cache holds several sequences, or the sums are already kept.</exception>
    internal void StartRunningSums()
    {
        if (Batch != 1) throw new InvalidOperationException($"running sums are kept for a cache of one sequence, not {Batch}");
        if (_runningSums != null) throw new InvalidOperationException("the running sums are already kept");
        long tokens = (long)HeadCount * MaxBlocks * BlockTokens;
        _runningSums = Device.Allocate(tokens * sizeof(double));
        _runningSums.Fill32(0);
    }

    /// <summary>Frees the running sums and the cut's buffers.</summary>
    internal void StopRunningSums()
    {
        if (_runningSums == null) return;
        try
        {
            Device.Synchronize(); // a queued sums launch may still read them
        }
        finally
        {
            foreach (var b in new[] { _runningSums, _runningScores, _runningBounds, _runningKeep }) b?.Dispose();
            (_runningSums, _runningScores, _runningBounds, _runningKeep) = (null, null, null, null);
        }
    }

    /// <summary>
    /// Ends the statistics collection without reading it back: each covered token's summed probability is added to its
    /// running sum on the device (queued: the next step's launches follow it on the stream).
    /// </summary>
    /// <exception cref="InvalidOperationException">No collection is in progress, or no running sums are kept.</exception>
    internal void EndStatisticsIntoRunningSums()
    {
        if (_statistics == null || _statSum == null || _covered == null) throw new InvalidOperationException("no attention statistics are being collected: call BeginStatistics first");
        var sums = KeptRunningSums;
        _kernels.AddSums(sums.Pointer, _statSum.Pointer, _covered.Pointer, HeadCount, MaxBlocks * BlockTokens);
        if (!KeepsPressBuffers) Device.Synchronize(); // StopStatistics frees what the launch reads
        StopStatistics();
    }

    /// <summary>
    /// H2O's cut from the running sums, on the device: per head the scores are (float) the sums, +∞ from stored index
    /// <paramref name="bounds"/>[HeadCount + h] on (the window), the first <paramref name="bounds"/>[h] stored tokens are
    /// protected, and press_select keeps the <paramref name="keep"/> best candidates (TopK.KeepMask's ranking in storage
    /// order: the caller's heads are stored in ascending position) and every +∞; the rest is evicted (the sums compacted
    /// with the pool). The scores stay on the device until the next cut (<see cref="RunningScores"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">No running sums are kept, or statistics are being collected.</exception>
    internal void EvictByRunningSums(int keep, int[] bounds)
    {
        var sums = KeptRunningSums;
        if (_statistics != null) throw new InvalidOperationException("cannot evict while attention statistics are being collected");
        if (bounds.Length != 2 * HeadCount) throw new ArgumentException($"{bounds.Length} bounds for {HeadCount} heads", nameof(bounds));
        int maxTokens = MaxBlocks * BlockTokens;
        _runningScores ??= Device.Allocate((long)HeadCount * maxTokens * sizeof(float));
        _runningBounds ??= Device.Allocate(2L * HeadCount * sizeof(int));
        _runningKeep ??= Device.Allocate(HeadCount * sizeof(int));
        _runningKeep.Fill32((uint)keep);
        _runningBounds.Upload<int>(bounds);
        var drop = Scratch(ref _keptFlags, (long)HeadCount * maxTokens, (long)HeadCount * maxTokens, out bool owned);
        try
        {
            _kernels.DecodeH2oScores(sums.Pointer, _headTokens.Pointer, _runningBounds.Pointer + (ulong)(HeadCount * sizeof(int)), _runningScores.Pointer,
                HeadCount, maxTokens);
            _kernels.Select(_runningScores.Pointer, _headTokens.Pointer, _runningKeep.Pointer, _runningBounds.Pointer, drop.Pointer, HeadCount, maxTokens);
            EvictOnDevice(drop);
        }
        finally
        {
            if (owned) drop.Dispose();
        }
    }

    /// <summary>The last <see cref="EvictByRunningSums"/>'s scores, the first <paramref name="counts"/>[h] of each head (storage order): one strided read-back.</summary>
    internal float[][] RunningScores(int[] counts)
    {
        if (_runningScores == null) throw new InvalidOperationException("no cut by the running sums was made");
        return DownloadHeads(_runningScores, counts);
    }

    /// <summary>The running sums, which must be kept (<see cref="StartRunningSums"/>).</summary>
    private DeviceBuffer KeptRunningSums => _runningSums ?? throw new InvalidOperationException("no running sums are kept: call StartRunningSums first");

    /// <summary>Refuses <paramref name="what"/> while the running sums are kept: it would reorder the stored tokens under them.</summary>
    private void RefuseRunningSums(string what)
    {
        if (_runningSums != null) throw new InvalidOperationException($"cannot {what} while a decode press keeps running sums over the cache (they follow appends and evictions only)");
    }
}
