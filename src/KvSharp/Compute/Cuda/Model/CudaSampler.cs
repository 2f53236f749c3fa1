using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation.Sampling;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// Chooses the next token on the GPU from logits the output head left in device memory (sampling.cu), with the stages,
/// rules and random sequence of the CPU <see cref="Sampler"/> for the same <see cref="SamplerOptions"/>: repetition
/// penalty, top-k, top-p, min-p, temperature, then a draw over the survivors in id order. Only the chosen token crosses
/// to the host (4 bytes instead of the vocabulary's logits). The random numbers come from the CPU sampler's generator on
/// the host, one per draw, so for one seed both samplers pick the same tokens except where a running sum lands within
/// float64 rounding of a boundary (their additions run in different orders), and after a row without a finite logit (the
/// CPU sampler then draws no number; this one does). Used through
/// <see cref="CudaTransformer.ForwardSample"/>; one instance per generation, not thread-safe.
/// </summary>
public sealed class CudaSampler : IDisposable
{
    private readonly CudaDevice _device;
    private readonly CudaModule _module;
    private readonly int _vocab;
    private readonly Xoshiro256StarStar _rng;
    private readonly DeviceBuffer _seen, _ids, _values, _weights, _token, _candidateIds, _candidateValues;
    private readonly int _slices;

    /// <summary>Tokens per slice of sample_slices, the first stage for top-k up to this many (and greedy).</summary>
    private const int SliceTokens = 1024;
    private DeviceBuffer _recent;
    private readonly int[] _result = new int[1];

    /// <summary>A sampler over vocabularies of <paramref name="vocabSize"/> tokens; throws <see cref="KvSharpException"/> on out-of-range options.</summary>
    public CudaSampler(CudaDevice device, int vocabSize, SamplerOptions options)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        options.Validate();
        Options = options;
        _device = device;
        _vocab = vocabSize;
        _rng = new Xoshiro256StarStar(options.Seed);
        device.MakeCurrent();
        _module = CudaModule.LoadEmbedded(device, "sampling.cu");
        _seen = device.Allocate((long)vocabSize * sizeof(uint));
        _seen.Fill32(0); // the kernel marks penalized tokens here and clears them again before it ends
        _ids = device.Allocate(2L * vocabSize * sizeof(int));
        _values = device.Allocate(2L * vocabSize * sizeof(float));
        _weights = device.Allocate((long)vocabSize * sizeof(double));
        _token = device.Allocate(sizeof(int));
        _slices = (vocabSize + SliceTokens - 1) / SliceTokens;
        _candidateIds = device.Allocate((long)_slices * SliceTokens * sizeof(int));
        _candidateValues = device.Allocate((long)_slices * SliceTokens * sizeof(float));
        _recent = device.Allocate(64 * sizeof(int));
    }

    /// <summary>The options this sampler applies.</summary>
    public SamplerOptions Options { get; }

    /// <summary>
    /// The next token from the logits row at device address <paramref name="logits"/> ([vocab] float32; the repetition
    /// penalty is applied to it in place), after <paramref name="recentTokens"/> (prompt and generated, oldest first; only
    /// the last <see cref="SamplerOptions.RepeatLastN"/> are penalized). Waits for the device.
    /// </summary>
    internal int Sample(ulong logits, ReadOnlySpan<int> recentTokens)
    {
        var o = Options;
        int window = o.RepetitionPenalty == 1f ? 0 : o.RepeatLastN < 0 ? recentTokens.Length : Math.Min(o.RepeatLastN, recentTokens.Length);
        var recent = recentTokens[^window..];
        foreach (int id in recent)
            if ((uint)id >= (uint)_vocab) throw new KvSharpException($"token id {id} in the sampler's history is outside the vocabulary (0..{_vocab - 1})");
        _device.MakeCurrent();
        if (window > 0)
        {
            if (_recent.ByteLength < (long)window * sizeof(int))
            {
                _recent.Dispose();
                _recent = _device.Allocate((long)window * 2 * sizeof(int));
            }
            _recent.Upload(recent);
            _module["sample_penalty"].Launch(1, 1024, 0, logits, _recent.Pointer, Arg.Int(window), Arg.Float(o.RepetitionPenalty), _seen.Pointer);
        }
        // Greedy and top-k up to a slice: every 1024-token slice keeps its best k in parallel first, and the ranking block
        // reads those few thousand candidates instead of the vocabulary.
        int candidates = 0;
        if (o.IsGreedy || o.TopK is > 0 and <= SliceTokens)
        {
            int k = o.IsGreedy ? 1 : o.TopK;
            _module["sample_slices"].Launch(_slices, 1024, 0, logits, Arg.Int(_vocab), Arg.Int(k), _candidateIds.Pointer, _candidateValues.Pointer);
            candidates = (_slices - 1) * k + Math.Min(k, _vocab - (_slices - 1) * SliceTokens);
        }
        // One uniform per draw, as the CPU sampler takes it (greedy options draw nothing).
        double u = o.IsGreedy ? 0 : _rng.NextDouble();
        _module["sample_logits"].Launch(1, 1024, 0, logits, Arg.Int(_vocab), _candidateIds.Pointer, _candidateValues.Pointer, Arg.Int(candidates),
            _ids.Pointer, _values.Pointer, _weights.Pointer, Arg.Int(o.IsGreedy ? 1 : 0), Arg.Int(o.TopK), Arg.Float(o.TopP), Arg.Int(o.MinP > 0f ? 1 : 0),
            Arg.Float(o.MinP > 0f ? MathF.Log(o.MinP) : 0f), Arg.Float(o.Temperature > 0f ? 1f / o.Temperature : 0f), Arg.Double(u), _token.Pointer);
        _token.Download<int>(_result);
        return _result[0];
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var b in new[] { _seen, _ids, _values, _weights, _token, _recent, _candidateIds, _candidateValues }) b.Dispose();
        _module.Dispose();
    }
}
