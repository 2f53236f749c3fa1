using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A float16 KV cache in device memory: per layer, K and V as [kvHeads, capacity, headDim], so one
/// head's keys are contiguous for attention. The current position also lives on the device, so a
/// captured decode step (a CUDA graph) advances it without the host.
/// </summary>
public sealed class CudaKvCache : IDisposable
{
    private readonly DeviceBuffer _storage;

    internal CudaKvCache(CudaDevice device, ModelConfig config, int capacity)
    {
        if (capacity <= 0) throw new KvSharpException($"KV cache capacity {capacity} must be positive");
        Device = device;
        Config = config;
        Capacity = capacity;
        LayerStride = (long)config.NumKvHeads * capacity * config.HeadDim * 2;
        _storage = device.Allocate(2 * LayerStride * config.NumLayers);
        Position = device.Allocate(sizeof(int));
        Next = device.Allocate(sizeof(int));
        History = device.Allocate((long)capacity * sizeof(int));
    }

    internal CudaDevice Device { get; }

    internal ModelConfig Config { get; }

    /// <summary>Tokens the cache can hold.</summary>
    public int Capacity { get; }

    /// <summary>Tokens held (the next token's position).</summary>
    public int Length { get; internal set; }

    /// <summary>Bytes of K and V storage allocated on the device.</summary>
    public long ByteCount => _storage.ByteLength;

    /// <summary>Bytes of K and V one decoded token reads at the current length (every layer, K and V).</summary>
    public long BytesReadPerToken => (long)Length * 2 * Config.NumLayers * Config.NumKvHeads * Config.HeadDim * 2;

    internal long LayerStride { get; }

    internal ulong Keys(int layer) => _storage.Pointer + (ulong)(2 * layer * LayerStride);

    internal ulong Values(int layer) => Keys(layer) + (ulong)LayerStride;

    /// <summary>Device int: position of the next token (read by RoPE, the cache append and attention).</summary>
    internal DeviceBuffer Position { get; }

    /// <summary>Device int: the token a decode step consumes and replaces with its greedy successor.</summary>
    internal DeviceBuffer Next { get; }

    /// <summary>Device ints: History[p] is the token greedily produced from the input at position p.</summary>
    internal DeviceBuffer History { get; }

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
    public void Dispose()
    {
        _storage.Dispose();
        Position.Dispose();
        Next.Dispose();
        History.Dispose();
    }
}
