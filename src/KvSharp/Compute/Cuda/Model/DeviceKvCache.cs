using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A KV cache in device memory that <see cref="CudaTransformer"/> runs over: the float16 <see cref="CudaKvCache"/> or
/// the compressed <see cref="CudaPagedKvCache"/>. The seam is one call per layer (RoPE, cache append and attention);
/// the positions, the next tokens and the greedy history live on the device so a captured decode step (a CUDA graph)
/// advances them without the host.
/// </summary>
public abstract class DeviceKvCache : IDisposable
{
    private readonly int[] _lengths;

    private protected DeviceKvCache(CudaDevice device, ModelConfig config, int capacity, int batch)
    {
        if (capacity <= 0) throw new KvSharpException($"KV cache capacity {capacity} must be positive");
        if (batch < 1 || batch > CudaKernels.MaxGemvRows) throw new KvSharpException($"a CUDA KV cache holds 1..{CudaKernels.MaxGemvRows} sequences, not {batch}");
        Device = device;
        Config = config;
        Capacity = capacity;
        Batch = batch;
        _lengths = new int[batch];
        Position = device.Allocate(batch * sizeof(int));
        Next = device.Allocate(batch * sizeof(int));
        History = device.Allocate((long)batch * capacity * sizeof(int));
    }

    internal CudaDevice Device { get; }

    internal ModelConfig Config { get; }

    /// <summary>Tokens (positions) each sequence can hold.</summary>
    public int Capacity { get; }

    /// <summary>Sequences the cache holds (decoded together, one row each).</summary>
    public int Batch { get; }

    /// <summary>Tokens appended to sequence 0 (the next token's position); eviction does not change it. See <see cref="LengthOf"/>.</summary>
    public int Length
    {
        get => _lengths[0];
        internal set => _lengths[0] = value;
    }

    /// <summary>Tokens appended to sequence <paramref name="sequence"/>.</summary>
    public int LengthOf(int sequence) => _lengths[sequence];

    internal void SetLength(int sequence, int length) => _lengths[sequence] = length;

    internal void SetAllLengths(int length) => Array.Fill(_lengths, length);

    /// <summary>Bytes of K and V storage allocated on the device.</summary>
    public abstract long ByteCount { get; }

    /// <summary>Bytes of K and V one decode step reads at the current lengths (every sequence, layer, K and V).</summary>
    public abstract long BytesReadPerToken { get; }

    /// <summary>Device ints [batch]: position of each sequence's next token (read by RoPE, the cache append and attention).</summary>
    internal DeviceBuffer Position { get; }

    /// <summary>Device ints [batch]: the token a decode step consumes and replaces with its greedy successor.</summary>
    internal DeviceBuffer Next { get; }

    /// <summary>Device ints [batch, capacity]: History[s, p] is the token greedily produced from sequence s's input at position p.</summary>
    internal DeviceBuffer History { get; }

    /// <summary>Whether prefill chunks may take the tensor-core attention over this cache (else the decode attention with causal rows).</summary>
    internal abstract bool SupportsFlashPrefill { get; }

    /// <summary>
    /// The attention split for <paramref name="rows"/> query rows while the cache grows up to <paramref name="visible"/>
    /// positions (the current length plus the rows of a forward chunk, or the capacity for a captured decode step).
    /// </summary>
    internal abstract CudaKernels.AttentionPlan PlanAttention(CudaKernels kernels, int visible, int rows);

    /// <summary>
    /// Queues one layer's attention block after the fused QKV product: optional q/k RMSNorm and RoPE at the device
    /// positions, the rows' keys and values appended to the cache, attention of the rows' queries into a.Output. True when
    /// it also queued the output product a.Projection (added to a.Hidden), false when the caller is to multiply.
    /// </summary>
    internal abstract bool EnqueueAttention(CudaKernels kernels, in LayerAttention a);

    /// <summary>
    /// Queues a decode step's QKV product with RoPE and the append of its keys and values done in the product's epilogue,
    /// when this cache can for <paramref name="f"/> (the float16 cache for one row; the paged cache for one row, or for a
    /// batch step's rows where it also takes the layer's attention-output product: <see cref="EnqueueOutputProduct"/>);
    /// false when it cannot, and the caller multiplies plainly and leaves RoPE and the append to <see cref="EnqueueAttention"/>.
    /// </summary>
    internal virtual bool EnqueueFusedQkv(CudaKernels kernels, in FusedQkv f) => false;

    /// <summary>
    /// Queues layer <paramref name="layer"/>'s attention-output product y += x · wᵀ of <paramref name="rows"/> rows after its
    /// attention, when this cache takes it (a batch step whose append <see cref="EnqueueFusedQkv"/> folded into the QKV
    /// product finishes there); false when the caller multiplies.
    /// </summary>
    internal virtual bool EnqueueOutputProduct(CudaKernels kernels, int layer, DeviceMatrix w, ulong x, ulong y, int rows) => false;

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

/// <summary>
/// Device buffers and shapes of one layer's attention step (see <see cref="DeviceKvCache.EnqueueAttention"/>): the rows
/// are consecutive tokens of <paramref name="Sequence"/> (positions at <paramref name="Position"/>), or with
/// <paramref name="Batch"/> one token of each sequence; <paramref name="Flash"/> asks for the tensor-core prefill attention;
/// <paramref name="Appended"/> says the QKV product already wrote the rotated queries to Q and appended the keys and values
/// (<see cref="DeviceKvCache.EnqueueFusedQkv"/>), leaving only the attention; <paramref name="Prefetch"/> names the weights
/// the kernels after the attention read, which the decode attention asks L2 for while it runs (none for the prefill one);
/// <paramref name="Hidden"/> is the rows' layer input [rows, hidden size] (the residual stream before the attention norm),
/// which KVzip+'s statistics weigh by; <paramref name="Projection"/> is the output product [hidden size, heads · hd]
/// after the attention, which a cache may fold into its attention, adding into Hidden (null: the caller multiplies).
/// </summary>
internal readonly record struct LayerAttention(
    int Layer, ulong Qkv, ulong Q, ulong QNorm, ulong KNorm, ulong InvFreq, ulong Output, ulong PartOut, ulong PartMl, ulong Counters,
    int Rows, bool Interleaved, float Eps, CudaKernels.AttentionPlan Plan, ulong Position, int Sequence, bool Batch, bool Flash,
    bool Appended = false, L2Prefetch Prefetch = default, ulong Hidden = 0, DeviceMatrix? Projection = null);

/// <summary>
/// A decode step's fused QKV product (<see cref="DeviceKvCache.EnqueueFusedQkv"/>): the stacked Q/K/V matrix of
/// <paramref name="Layer"/>, the residual stream's <paramref name="Rows"/> rows at <paramref name="X"/> and their attention
/// norm, rotated queries to <paramref name="Q"/>, keys and values appended to <paramref name="Sequence"/> at the device
/// position (with <paramref name="Batch"/>: row t to sequence t at its position); <paramref name="Output"/>: the layer's
/// attention-output matrix, which a batch step's fold needs (<see cref="DeviceKvCache.EnqueueOutputProduct"/>).
/// </summary>
internal readonly record struct FusedQkv(
    int Layer, int Sequence, DeviceMatrix Weights, ulong X, ulong Norm, float Eps, ulong Q, ulong InvFreq, ulong Position, bool Interleaved,
    int Rows = 1, bool Batch = false, DeviceMatrix? Output = null);
