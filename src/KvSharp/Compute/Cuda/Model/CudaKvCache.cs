using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A float16 KV cache in device memory: per layer, K and V as [kvHeads, capacity, headDim], so one
/// head's keys are contiguous for attention. The current position also lives on the device, so a
/// captured decode step (a CUDA graph) advances it without the host.
/// </summary>
public sealed class CudaKvCache : DeviceKvCache
{
    private readonly DeviceBuffer _storage;

    internal CudaKvCache(CudaDevice device, ModelConfig config, int capacity) : base(device, config, capacity)
    {
        LayerStride = (long)config.NumKvHeads * capacity * config.HeadDim * 2;
        _storage = device.Allocate(2 * LayerStride * config.NumLayers);
    }

    /// <inheritdoc />
    public override long ByteCount => _storage.ByteLength;

    /// <inheritdoc />
    public override long BytesReadPerToken => (long)Length * 2 * Config.NumLayers * Config.NumKvHeads * Config.HeadDim * 2;

    internal long LayerStride { get; }

    internal ulong Keys(int layer) => _storage.Pointer + (ulong)(2 * layer * LayerStride);

    internal ulong Values(int layer) => Keys(layer) + (ulong)LayerStride;

    internal override CudaKernels.AttentionPlan PlanAttention(CudaKernels kernels, int visible, int rows) =>
        kernels.PlanAttention(visible, rows, Config.NumHeads, Config.NumKvHeads, Config.HeadDim);

    internal override void EnqueueAttention(CudaKernels kernels, in LayerAttention a)
    {
        var c = Config;
        kernels.QkvRopeAppend(a.Qkv, a.Q, a.QNorm, a.KNorm, a.InvFreq, Keys(a.Layer), Values(a.Layer), a.Rows, c.NumHeads, c.NumKvHeads, c.HeadDim,
            Capacity, Position.Pointer, a.Interleaved, a.Eps);
        kernels.Attention(a.Q, Keys(a.Layer), Values(a.Layer), a.Output, a.PartOut, a.PartMl, a.Counters,
            a.Rows, c.NumHeads, c.NumKvHeads, c.HeadDim, Capacity, Position.Pointer, a.Plan);
    }

    /// <summary>
    /// Sets the length to <paramref name="length"/> with pseudo-random K and V: decode benchmarks at long
    /// contexts without a prefill of that length (attention cost depends on the length, not the values).
    /// </summary>
    internal void FillRandom(CudaKernels kernels, int length, uint seed)
    {
        if (length > Capacity) throw new KvSharpException($"length {length} exceeds the cache capacity {Capacity}");
        kernels.FillRandomF16(_storage.Pointer, _storage.ByteLength / 2, seed, 1.0f);
        Length = length;
        kernels.Device.Synchronize();
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _storage.Dispose();
        base.Dispose();
    }
}
