using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A KV cache in device memory that <see cref="CudaTransformer"/> runs over: the float16 <see cref="CudaKvCache"/> or
/// the compressed <see cref="CudaPagedKvCache"/>. The seam is one call per layer (RoPE, cache append and attention);
/// the current position, the next token and the greedy history live on the device so a captured decode step (a CUDA
/// graph) advances them without the host.
/// </summary>
public abstract class DeviceKvCache : IDisposable
{
    private protected DeviceKvCache(CudaDevice device, ModelConfig config, int capacity)
    {
        if (capacity <= 0) throw new KvSharpException($"KV cache capacity {capacity} must be positive");
        Device = device;
        Config = config;
        Capacity = capacity;
        Position = device.Allocate(sizeof(int));
        Next = device.Allocate(sizeof(int));
        History = device.Allocate((long)capacity * sizeof(int));
    }

    internal CudaDevice Device { get; }

    internal ModelConfig Config { get; }

    /// <summary>Tokens (positions) the cache can hold.</summary>
    public int Capacity { get; }

    /// <summary>Tokens appended (the next token's position); eviction does not change it.</summary>
    public int Length { get; internal set; }

    /// <summary>Bytes of K and V storage allocated on the device.</summary>
    public abstract long ByteCount { get; }

    /// <summary>Bytes of K and V one decoded token reads at the current length (every layer, K and V).</summary>
    public abstract long BytesReadPerToken { get; }

    /// <summary>Device int: position of the next token (read by RoPE, the cache append and attention).</summary>
    internal DeviceBuffer Position { get; }

    /// <summary>Device int: the token a decode step consumes and replaces with its greedy successor.</summary>
    internal DeviceBuffer Next { get; }

    /// <summary>Device ints: History[p] is the token greedily produced from the input at position p.</summary>
    internal DeviceBuffer History { get; }

    /// <summary>
    /// The attention split for <paramref name="rows"/> query rows while the cache grows up to <paramref name="visible"/>
    /// positions (the current length plus the rows of a forward chunk, or the capacity for a captured decode step).
    /// </summary>
    internal abstract CudaKernels.AttentionPlan PlanAttention(CudaKernels kernels, int visible, int rows);

    /// <summary>
    /// Queues one layer's attention block after the fused QKV product: optional q/k RMSNorm and RoPE at positions
    /// *Position.., the rows' keys and values appended to the cache, attention of the rows' queries into a.Output.
    /// </summary>
    internal abstract void EnqueueAttention(CudaKernels kernels, in LayerAttention a);

    /// <summary>Throws when an operation on the device failed in a way only the device could see (e.g. a full pool).</summary>
    internal virtual void CheckDeviceState() { }

    /// <inheritdoc />
    public virtual void Dispose()
    {
        Position.Dispose();
        Next.Dispose();
        History.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>Device buffers and shapes of one layer's attention step (see <see cref="DeviceKvCache.EnqueueAttention"/>).</summary>
internal readonly record struct LayerAttention(
    int Layer, ulong Qkv, ulong Q, ulong QNorm, ulong KNorm, ulong InvFreq, ulong Output, ulong PartOut, ulong PartMl, ulong Counters,
    int Rows, bool Interleaved, float Eps, CudaKernels.AttentionPlan Plan);
