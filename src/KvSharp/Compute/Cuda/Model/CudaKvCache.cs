using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A float16 KV cache in device memory for <see cref="Batch"/> sequences: per layer, K and V as
/// [sequence, kvHeads, capacity, headDim], so one head's keys are contiguous for attention. Each sequence
/// has its own length; the positions also live on the device, so a captured decode step (a CUDA graph)
/// advances them without the host.
/// </summary>
public sealed class CudaKvCache : IDisposable
{
    private readonly DeviceBuffer _storage;
    private readonly int[] _lengths;

    internal CudaKvCache(CudaDevice device, ModelConfig config, int capacity, int batch = 1)
    {
        if (capacity <= 0) throw new KvSharpException($"KV cache capacity {capacity} must be positive");
        if (batch < 1 || batch > CudaKernels.MaxGemvRows) throw new KvSharpException($"a CUDA KV cache holds 1..{CudaKernels.MaxGemvRows} sequences, not {batch}");
        Device = device;
        Config = config;
        Capacity = capacity;
        Batch = batch;
        _lengths = new int[batch];
        SequenceStride = (long)config.NumKvHeads * capacity * config.HeadDim;
        LayerStride = batch * SequenceStride * 2;
        _storage = device.Allocate(2 * LayerStride * config.NumLayers);
        Position = device.Allocate(batch * sizeof(int));
        Next = device.Allocate(batch * sizeof(int));
        History = device.Allocate((long)batch * capacity * sizeof(int));
    }

    internal CudaDevice Device { get; }

    internal ModelConfig Config { get; }

    /// <summary>Tokens each sequence can hold.</summary>
    public int Capacity { get; }

    /// <summary>Sequences the cache holds (decoded together, one row each).</summary>
    public int Batch { get; }

    /// <summary>Tokens held by sequence 0 (the next token's position); see <see cref="LengthOf"/> for a batch.</summary>
    public int Length
    {
        get => _lengths[0];
        internal set => _lengths[0] = value;
    }

    /// <summary>Tokens held by sequence <paramref name="sequence"/>.</summary>
    public int LengthOf(int sequence) => _lengths[sequence];

    internal void SetLength(int sequence, int length) => _lengths[sequence] = length;

    /// <summary>Bytes of K and V storage allocated on the device.</summary>
    public long ByteCount => _storage.ByteLength;

    /// <summary>Bytes of K and V one decode step reads at the current lengths (every sequence, layer, K and V).</summary>
    public long BytesReadPerToken => _lengths.Sum(n => (long)n) * 2 * Config.NumLayers * Config.NumKvHeads * Config.HeadDim * 2;

    /// <summary>Bytes of one layer's K (or V) for all sequences.</summary>
    internal long LayerStride { get; }

    /// <summary>Elements (float16) between consecutive sequences' K (or V) of one layer.</summary>
    internal long SequenceStride { get; }

    internal ulong Keys(int layer, int sequence = 0) => _storage.Pointer + (ulong)(2 * layer * LayerStride + sequence * SequenceStride * 2);

    internal ulong Values(int layer, int sequence = 0) => Keys(layer, sequence) + (ulong)LayerStride;

    /// <summary>Device ints [batch]: position of each sequence's next token (read by RoPE, the cache append and attention).</summary>
    internal DeviceBuffer Position { get; }

    /// <summary>Device ints [batch]: the token a decode step consumes and replaces with its greedy successor.</summary>
    internal DeviceBuffer Next { get; }

    /// <summary>Device ints [batch, capacity]: History[s, p] is the token greedily produced from sequence s's input at position p.</summary>
    internal DeviceBuffer History { get; }

    /// <summary>
    /// Sets every sequence's length to <paramref name="length"/> with pseudo-random K and V: decode benchmarks at long
    /// contexts without a prefill of that length (attention cost depends on the length, not the values).
    /// </summary>
    internal void FillRandom(CudaKernels kernels, int length, uint seed)
    {
        if (length > Capacity) throw new KvSharpException($"length {length} exceeds the cache capacity {Capacity}");
        kernels.FillRandomF16(_storage.Pointer, _storage.ByteLength / 2, seed, 1.0f);
        Array.Fill(_lengths, length);
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
