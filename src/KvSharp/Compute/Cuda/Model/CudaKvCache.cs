using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A float16 KV cache in device memory for <see cref="DeviceKvCache.Batch"/> sequences: per layer, K and V as
/// [sequence, kvHeads, capacity, headDim], so one head's keys are contiguous for attention. Each sequence
/// has its own length; the positions also live on the device, so a captured decode step (a CUDA graph)
/// advances them without the host.
/// </summary>
public sealed class CudaKvCache : DeviceKvCache
{
    private readonly DeviceBuffer _storage;

    internal CudaKvCache(CudaDevice device, ModelConfig config, int capacity, int batch = 1) : base(device, config, capacity, batch)
    {
        SequenceStride = (long)config.NumKvHeads * capacity * config.HeadDim;
        LayerStride = batch * SequenceStride * 2;
        _storage = device.Allocate(2 * LayerStride * config.NumLayers);
    }

    /// <inheritdoc />
    public override long ByteCount => _storage.ByteLength;

    /// <inheritdoc />
    public override long BytesReadPerToken =>
        Enumerable.Range(0, Batch).Sum(i => (long)LengthOf(i)) * 2 * Config.NumLayers * Config.NumKvHeads * Config.HeadDim * 2;

    internal override bool SupportsFlashPrefill => true;

    internal override CudaKernels.AttentionPlan PlanAttention(CudaKernels kernels, int visible, int rows) =>
        kernels.PlanAttention(visible, rows, Config.NumHeads, Config.NumKvHeads, Config.HeadDim);

    internal override bool EnqueueAttention(CudaKernels kernels, in LayerAttention a)
    {
        var c = Config;
        int hd = c.HeadDim, seq = a.Batch ? 0 : a.Sequence;
        long seqStride = a.Batch ? SequenceStride : 0;
        ulong keys = Keys(a.Layer, seq), values = Values(a.Layer, seq);
        if (!a.Appended)
            kernels.QkvRopeAppend(a.Qkv, a.Q, a.QNorm, a.KNorm, a.InvFreq, keys, values, a.Rows, c.NumHeads, c.NumKvHeads, hd, Capacity, a.Position,
                a.Interleaved, a.Eps, seqStride);
        if (a.Flash) kernels.FlashPrefill(a.Q, keys, values, a.Output, a.Rows, c.NumHeads, c.NumKvHeads, hd, Capacity, a.Position);
        else
            kernels.Attention(a.Q, keys, values, a.Output, a.PartOut, a.PartMl, a.Counters, a.Rows, c.NumHeads, c.NumKvHeads, hd, Capacity, a.Position,
                a.Plan, seqStride, a.Prefetch);
        return false;
    }

    internal override bool EnqueueFusedQkv(CudaKernels kernels, in FusedQkv f)
    {
        if (f.Rows != 1) return false;
        var c = Config;
        kernels.GemvQkvRope(f.Weights.Type, f.Weights.Pointer, f.X, f.Norm, f.Eps, f.Weights.Cols, f.Q, Keys(f.Layer, f.Sequence), Values(f.Layer, f.Sequence),
            f.InvFreq, c.NumHeads, c.NumKvHeads, c.HeadDim, Capacity, f.Position, f.Interleaved);
        return true;
    }

    /// <summary>Bytes of one layer's K (or V) for all sequences.</summary>
    internal long LayerStride { get; }

    /// <summary>Elements (float16) between consecutive sequences' K (or V) of one layer.</summary>
    internal long SequenceStride { get; }

    internal ulong Keys(int layer, int sequence = 0) => _storage.Pointer + (ulong)(2 * layer * LayerStride + sequence * SequenceStride * 2);

    internal ulong Values(int layer, int sequence = 0) => Keys(layer, sequence) + (ulong)LayerStride;

    /// <summary>
    /// Sets every sequence's length to <paramref name="length"/> with pseudo-random K and V: decode benchmarks at long
    /// contexts without a prefill of that length (attention cost depends on the length, not the values).
    /// </summary>
    internal void FillRandom(CudaKernels kernels, int length, uint seed)
    {
        if (length > Capacity) throw new KvSharpException($"length {length} exceeds the cache capacity {Capacity}");
        kernels.FillRandomF16(_storage.Pointer, _storage.ByteLength / 2, seed, 1.0f);
        SetAllLengths(length);
        kernels.Device.Synchronize();
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _storage.Dispose();
        base.Dispose();
    }
}
