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
/// CPU sampler then draws no number; this one does). Each token's host inputs (the draw, the penalty's window) go to the
/// device in one upload to a fixed buffer, so the kernels can also run inside a captured decode graph. Used through
/// <see cref="CudaTransformer.ForwardSample"/>; one instance per generation (or <see cref="Restart"/> between generations, as
/// the CPU starts a new sampler for each), not thread-safe.
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
    /// <summary>sampling.cu's SampleStep: the draw (float64), the window's count, padding, then its token ids.</summary>
    private const int StepHeaderBytes = 16;
    private DeviceBuffer _step;
    private byte[] _stepHost = new byte[StepHeaderBytes + 64 * sizeof(int)];
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
        _step = device.Allocate(_stepHost.Length);
    }

    /// <summary>The options this sampler applies.</summary>
    public SamplerOptions Options { get; }

    /// <summary>
    /// Starts the random sequence again from the seed, for the next generation: the CPU engine samples every generation
    /// (each question of <c>ask</c>) with a new <see cref="Sampler"/>, so a sampler reused across generations without this
    /// draws different numbers from the second one on. The device buffers and a decode graph that captured this sampler stay valid.
    /// </summary>
    public void Restart() => _rng.Reseed(Options.Seed);

    /// <summary>
    /// Counts moves of the step buffer the kernels read (a longer penalty window needs a larger one): a decode graph that
    /// captured <see cref="Enqueue"/> is stale once this changes.
    /// </summary>
    internal int Version { get; private set; }

    /// <summary>
    /// Whether the sampler only takes the largest logit (greedy without a repetition penalty): the greedy output head
    /// (argmax folded into the product) then chooses the same token.
    /// </summary>
    internal bool IsPlainGreedy => Options.IsGreedy && Options.RepetitionPenalty == 1f;

    /// <summary>
    /// The next token from the logits row at device address <paramref name="logits"/> ([vocab] float32; the repetition
    /// penalty is applied to it in place), after <paramref name="recentTokens"/> (prompt and generated, oldest first; only
    /// the last <see cref="SamplerOptions.RepeatLastN"/> are penalized). Waits for the device.
    /// </summary>
    internal int Sample(ulong logits, ReadOnlySpan<int> recentTokens)
    {
        PrepareStep(recentTokens);
        Enqueue(logits, _token.Pointer);
        _token.Download<int>(_result);
        return _result[0];
    }

    /// <summary>
    /// The host's part of one token, before <see cref="Enqueue"/>'s kernels run (eagerly or in a replayed graph): checks the
    /// penalty's window of <paramref name="recentTokens"/>, draws the uniform number (one per draw, as the CPU sampler
    /// takes it; greedy options draw nothing) and uploads both to the step buffer.
    /// </summary>
    internal void PrepareStep(ReadOnlySpan<int> recentTokens)
    {
        var o = Options;
        int window = o.RepetitionPenalty == 1f ? 0 : o.RepeatLastN < 0 ? recentTokens.Length : Math.Min(o.RepeatLastN, recentTokens.Length);
        var recent = recentTokens[^window..];
        foreach (int id in recent)
            if ((uint)id >= (uint)_vocab) throw new KvSharpException($"token id {id} in the sampler's history is outside the vocabulary (0..{_vocab - 1})");
        _device.MakeCurrent();
        int bytes = StepHeaderBytes + window * sizeof(int);
        if (_stepHost.Length < bytes)
        {
            _stepHost = new byte[2 * bytes];
            _step.Dispose();
            _step = _device.Allocate(_stepHost.Length);
            Version++;
        }
        double u = o.IsGreedy ? 0 : _rng.NextDouble();
        BitConverter.TryWriteBytes(_stepHost.AsSpan(0, 8), u);
        BitConverter.TryWriteBytes(_stepHost.AsSpan(8, 4), window);
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(recent).CopyTo(_stepHost.AsSpan(StepHeaderBytes));
        _step.Upload<byte>(_stepHost.AsSpan(0, bytes));
    }

    /// <summary>
    /// Queues the sampling kernels over the logits row at <paramref name="logits"/> with the inputs of the last
    /// <see cref="PrepareStep"/>, the token written to <paramref name="output"/> (device address of one int). No host work
    /// and no wait, so a decode graph can capture it.
    /// </summary>
    internal void Enqueue(ulong logits, ulong output)
    {
        var o = Options;
        if (o.RepetitionPenalty != 1f)
            _module["sample_penalty"].Launch(1, 1024, 0, logits, _step.Pointer, Arg.Float(o.RepetitionPenalty), _seen.Pointer);
        // Greedy and top-k up to a slice: every 1024-token slice keeps its best k in parallel first, and the ranking block
        // reads those few thousand candidates instead of the vocabulary.
        int candidates = 0;
        if (o.IsGreedy || o.TopK is > 0 and <= SliceTokens)
        {
            int k = o.IsGreedy ? 1 : o.TopK;
            _module["sample_slices"].Launch(_slices, 1024, 0, logits, Arg.Int(_vocab), Arg.Int(k), _candidateIds.Pointer, _candidateValues.Pointer);
            candidates = (_slices - 1) * k + Math.Min(k, _vocab - (_slices - 1) * SliceTokens);
        }
        _module["sample_logits"].Launch(1, 1024, 0, logits, Arg.Int(_vocab), _candidateIds.Pointer, _candidateValues.Pointer, Arg.Int(candidates),
            _ids.Pointer, _values.Pointer, _weights.Pointer, Arg.Int(o.IsGreedy ? 1 : 0), Arg.Int(o.TopK), Arg.Float(o.TopP), Arg.Int(o.MinP > 0f ? 1 : 0),
            Arg.Float(o.MinP > 0f ? MathF.Log(o.MinP) : 0f), Arg.Float(o.Temperature > 0f ? 1f / o.Temperature : 0f), _step.Pointer, output);
    }

    /// <summary>
    /// Queues the end of a captured decode step: the token at <paramref name="next"/> joins <paramref name="history"/> at the
    /// row's <paramref name="position"/>, which advances by one (device addresses; one sequence).
    /// </summary>
    internal void EnqueueCommit(ulong next, ulong history, ulong position) =>
        _module["sample_commit"].Launch(1, 1, 0, next, history, position);

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var b in new[] { _seen, _ids, _values, _weights, _token, _step, _candidateIds, _candidateValues }) b.Dispose();
        _module.Dispose();
    }
}
