using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// The Llama-family decoder of <see cref="Transformer"/> on an NVIDIA GPU: weights in device memory
/// (bfloat16, float16 or float32), float32 activations, a float16 <see cref="CudaKvCache"/>.
/// Decode (≤ 8 rows) multiplies with the memory-bound matrix-vector kernels; longer prefill chunks go
/// through cuBLAS. Greedy generation replays one captured CUDA graph per token.
/// </summary>
public sealed class CudaTransformer : IDisposable
{
    private readonly CudaDevice _device;
    private readonly CudaKernels _kernels;
    private readonly CudaBlas _blas;
    private readonly List<IDisposable> _owned = [];
    private readonly Layer[] _layers;
    private readonly DeviceMatrix _embedding, _output;
    private readonly DeviceBuffer _outputNorm, _invFreq;
    private Scratch? _scratch;
    private CudaGraph? _decodeGraph;
    private DeviceKvCache? _graphCache;
    private CudaKernels.AttentionPlan _graphPlan;
    private CudaSampler? _graphSampler; // the sampler a captured step ends in (null: the greedy output head)
    private int _graphSamplerVersion;
    private int _graphLength = -1, _graphToken = -1; // after a sampled graph step: the cache length and input token the device holds

    /// <summary>One decoder layer's device tensors: Q/K/V stacked into one matrix, gate/up into another.</summary>
    private sealed record Layer(
        DeviceBuffer AttnNorm, DeviceMatrix Qkv, DeviceBuffer? QkvBias, DeviceBuffer? QNorm, DeviceBuffer? KNorm,
        DeviceMatrix AttnOutput, DeviceBuffer FfnNorm, DeviceMatrix GateUp, DeviceMatrix Down);

    /// <summary>Uploads <paramref name="weights"/> to <paramref name="device"/> with matrices in <paramref name="weightType"/>.</summary>
    public CudaTransformer(CudaDevice device, ModelWeights weights, DeviceWeightType weightType = DeviceWeightType.BF16)
    {
        var c = weights.Config;
        c.Validate(weights.Source);
        if (!CudaKernels.SupportsGroup(c.GroupSize))
            throw new KvSharpException($"{weights.Source}: {c.GroupSize} query heads per KV head are not supported by the CUDA backend (1..8 or 16)");
        Config = c;
        WeightType = weightType;
        _device = device;
        try
        {
            _kernels = Own(new CudaKernels(device));
            _blas = Own(new CudaBlas(device));
            var embedding = weights.Require(TensorNames.TokenEmbedding);
            _embedding = Own(DeviceWeights.Matrix(device, embedding, c.VocabSize, c.HiddenSize, weightType));
            var output = weights.Find(TensorNames.Output);
            _output = output == null ? _embedding : Own(DeviceWeights.Matrix(device, output, c.VocabSize, c.HiddenSize, weightType));
            _outputNorm = Own(DeviceWeights.Vector(device, Vector(weights, TensorNames.OutputNorm, c.HiddenSize)!));
            _invFreq = Own(DeviceWeights.Vector(device, Rope.InverseFrequencies(c)));
            int qDim = c.NumHeads * c.HeadDim, kvDim = c.NumKvHeads * c.HeadDim;
            _layers = new Layer[c.NumLayers];
            for (int l = 0; l < c.NumLayers; l++)
            {
                string N(string s) => TensorNames.Layer(l, s);
                TensorView T(string s) => weights.Require(N(s));
                DeviceBuffer? V(string s, int length) => Vector(weights, N(s), length) is { } v ? Own(DeviceWeights.Vector(device, v)) : null;
                _layers[l] = new Layer(
                    V(TensorNames.Suffix.AttnNorm, c.HiddenSize)!,
                    Own(DeviceWeights.Stacked(device, [(T(TensorNames.Suffix.Q), qDim), (T(TensorNames.Suffix.K), kvDim), (T(TensorNames.Suffix.V), kvDim)], c.HiddenSize, weightType)),
                    QkvBias(weights, l, qDim, kvDim),
                    c.QkNorm ? V(TensorNames.Suffix.QNorm, c.HeadDim) : null, c.QkNorm ? V(TensorNames.Suffix.KNorm, c.HeadDim) : null,
                    Own(DeviceWeights.Matrix(device, T(TensorNames.Suffix.AttnOutput), c.HiddenSize, qDim, weightType)),
                    V(TensorNames.Suffix.FfnNorm, c.HiddenSize)!,
                    Own(DeviceWeights.Stacked(device, [(T(TensorNames.Suffix.FfnGate), c.IntermediateSize), (T(TensorNames.Suffix.FfnUp), c.IntermediateSize)], c.HiddenSize, weightType)),
                    Own(DeviceWeights.Matrix(device, T(TensorNames.Suffix.FfnDown), c.HiddenSize, c.IntermediateSize, weightType)));
            }
            device.Synchronize();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The model's architecture.</summary>
    public ModelConfig Config { get; }

    /// <summary>Element type of the device weight matrices.</summary>
    public DeviceWeightType WeightType { get; }

    /// <summary>The device the model lives on.</summary>
    public CudaDevice Device => _device;

    /// <summary>Rows per forward chunk: bounds activation memory for long prompts.</summary>
    public int PrefillChunk { get; init; } = 2048;

    /// <summary>
    /// Whether a single decode row's QKV product also does RoPE and the cache append (one launch instead of two per
    /// layer) where the model and cache allow it (no QKV bias, no q/k norms; the float16 cache, or the paged cache at
    /// batch 1, whose residual bookkeeping and encode run in the product's last block per KV head). On by default;
    /// benchmarks compare both (takes effect at the next capture).
    /// </summary>
    public bool FuseRopeIntoQkv { get; set; } = true;

    /// <summary>
    /// Whether the captured decode step (up to <see cref="CudaKernels.MaxGemvRows"/> sequences) folds the greedy choice
    /// into the output head's product (one 64-bit atomic maximum per warp, or per row tile and sequence in the batch
    /// product) instead of a separate pass over the logits. On by default; benchmarks compare both. Takes effect at the
    /// next capture.
    /// </summary>
    public bool FuseArgMaxIntoHead { get; set; } = true;

    /// <summary>
    /// Whether <see cref="ForwardSample"/> runs a one-token decode step by replaying a captured graph of the whole step
    /// (layers, output head, sampler) rather than launching each kernel. On by default; benchmarks compare both.
    /// </summary>
    public bool SampleInGraph { get; set; } = true;

    /// <summary>
    /// Whether each decode layer's attention asks L2 for the layer's output projection, the next kernel's weights, while it
    /// runs (one bulk prefetch per grid block before its griddepcontrol.wait), so that device memory, idle while a
    /// latency-bound attention works, streams them ahead. Off by default: on an H200 it gained nothing at 512 tokens (the
    /// output product is hardly faster from L2) and cost 0.3-5% of a step where the attention streams more (its own reads
    /// wait behind the prefetch; docs/benchmarks.md, issue 7); benchmarks compare both. Takes effect at the next capture.
    /// </summary>
    public bool PrefetchNextWeights { get; set; }

    /// <summary>Bytes of weight matrices one decoded token reads (every layer's matrices and the output head).</summary>
    public long WeightBytesReadPerToken =>
        _layers.Sum(L => L.Qkv.Buffer.ByteLength + L.AttnOutput.Buffer.ByteLength + L.GateUp.Buffer.ByteLength + L.Down.Buffer.ByteLength)
        + _output.Buffer.ByteLength;

    internal CudaKernels Kernels => _kernels;

    /// <summary>The output projection W_o [hidden, heads · head dim] of <paramref name="layer"/> on the device (KVzip+'s value weights).</summary>
    internal DeviceMatrix AttnOutput(int layer) => _layers[layer].AttnOutput;

    /// <summary>
    /// The matrices of <paramref name="layer"/> and the output head with the kernel mode decode uses for each, the norm
    /// fused into it (0 for none) and whether a step of <paramref name="rows"/> rows passes it 16-bit activations
    /// (<see cref="CudaKernels.UsesNarrowFfn"/>: the gate/up product's output, the down product's input), in decode order,
    /// for kernel benchmarks.
    /// </summary>
    internal IReadOnlyList<(string Name, DeviceMatrix Matrix, CudaKernels.GemvMode Mode, ulong Norm, bool Narrow)> DecodeMatrices(int layer = 0, int rows = 1)
    {
        var L = _layers[layer];
        bool narrow = _kernels.UsesNarrowFfn(L.GateUp.Type, Config.HiddenSize, L.Down.Type, Config.IntermediateSize, rows);
        return
        [
            ("qkv+norm", L.Qkv, CudaKernels.GemvMode.Store, L.AttnNorm.Pointer, false),
            ("attn_output", L.AttnOutput, CudaKernels.GemvMode.Accumulate, 0, false),
            ("gate_up+norm+swiglu", L.GateUp, CudaKernels.GemvMode.SwiGlu, L.FfnNorm.Pointer, narrow),
            ("down", L.Down, CudaKernels.GemvMode.Accumulate, 0, narrow),
            ("output+norm", _output, CudaKernels.GemvMode.Store, _outputNorm.Pointer, false),
        ];
    }

    /// <summary>An empty device cache for up to <paramref name="capacity"/> tokens of each of <paramref name="batch"/> sequences.</summary>
    public CudaKvCache CreateCache(int capacity, int batch = 1) => new(_device, Config, capacity, batch);

    /// <summary>
    /// An empty compressed device cache for up to <paramref name="capacity"/> tokens of each of <paramref name="batch"/>
    /// sequences in the formats of <paramref name="options"/>.
    /// </summary>
    public CudaPagedKvCache CreatePagedCache(PagedKvCacheOptions options, int capacity, long? poolBytes = null, int batch = 1) =>
        new(_device, Config, options, capacity, poolBytes, batch);

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions cache.LengthOf(sequence).. of sequence <paramref name="sequence"/> and
    /// appends their keys and values to <paramref name="cache"/>. Returns logits: [vocab] for the last token, or
    /// [tokens, vocab] with <see cref="LogitsMode.All"/>.
    /// </summary>
    public float[] Forward(ReadOnlySpan<int> tokens, DeviceKvCache cache, LogitsMode mode = LogitsMode.Last, int sequence = 0)
    {
        var logits = new float[mode == LogitsMode.All ? tokens.Length * Config.VocabSize : Config.VocabSize];
        Run(tokens, cache, mode, sequence, logits);
        return logits;
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> as <see cref="Forward"/> does and chooses the next token on the device from the last
    /// one's logits with <paramref name="sampler"/> (<paramref name="recentTokens"/>: the history its repetition penalty
    /// reads, prompt and generated). Only the token is copied back. One token of sequence 0 (a decode step) replays a
    /// captured CUDA graph of the whole step — layers, output head, sampler — instead of launching each kernel.
    /// </summary>
    public int ForwardSample(ReadOnlySpan<int> tokens, DeviceKvCache cache, CudaSampler sampler, ReadOnlySpan<int> recentTokens, int sequence = 0)
    {
        ArgumentNullException.ThrowIfNull(sampler);
        if (SampleInGraph && tokens.Length == 1 && sequence == 0 && cache.Batch == 1 && cache is not CudaPagedKvCache { IsCollectingStatistics: true })
            return GraphSample(tokens[0], cache, sampler, recentTokens);
        return sampler.Sample(Run(tokens, cache, LogitsMode.Last, sequence, null), recentTokens);
    }

    /// <summary>
    /// One decode step through the captured graph: embedding of the device-side token, layers, output head and the
    /// sampler's kernels (or the greedy head, for greedy options without a penalty), the token written back as the next
    /// step's input and into the history, the position advanced. The token and position are uploaded only when the
    /// device's differ (after a prefill, or when the caller passes another token than the one just sampled).
    /// </summary>
    private int GraphSample(int token, DeviceKvCache cache, CudaSampler sampler, ReadOnlySpan<int> recentTokens)
    {
        CheckRun([token], cache, 0);
        int length = cache.Length;
        _device.MakeCurrent();
        var head = sampler.IsPlainGreedy ? null : sampler;
        head?.PrepareStep(recentTokens); // before a capture: a longer penalty window moves the buffer the kernels read
        if (!GraphIsCurrent(cache, head)) Capture(cache, head);
        if (_graphLength != length || _graphToken != token)
        {
            cache.Position.Upload<int>([length]);
            cache.Next.Upload<int>([token]);
        }
        _decodeGraph!.Launch();
        var next = new int[1];
        cache.Next.Download<int>(next);
        cache.CheckDeviceState();
        cache.SetLength(0, length + 1);
        (_graphLength, _graphToken) = (length + 1, next[0]);
        return next[0];
    }

    /// <summary>
    /// The forward pass of <see cref="Forward"/>, copying the logits into <paramref name="logits"/> when given; returns the
    /// device address of the last token's logits row (valid until the next call).
    /// </summary>
    private ulong Run(ReadOnlySpan<int> tokens, DeviceKvCache cache, LogitsMode mode, int sequence, float[]? logits)
    {
        CheckRun(tokens, cache, sequence);
        _device.MakeCurrent();
        _graphLength = -1; // the device's position and token no longer follow a sampled graph step
        int vocab = Config.VocabSize;
        ulong lastRow = 0;
        for (int start = 0; start < tokens.Length; start += PrefillChunk)
        {
            int n = Math.Min(PrefillChunk, tokens.Length - start);
            bool last = start + n == tokens.Length;
            var s = ScratchFor(n, cache, mode == LogitsMode.All ? n : 1);
            s.Tokens.Upload(tokens.Slice(start, n));
            s.Host[0] = cache.LengthOf(sequence);
            cache.Position.Upload<int>(s.Host.AsSpan(0, 1), (long)sequence * sizeof(int));
            var plan = cache.PlanAttention(_kernels, cache.LengthOf(sequence) + n, n);
            if (!UsesFlash(n, cache)) EnsurePartials(s, n, plan);
            EnqueueLayers(s, cache, n, s.Tokens.Pointer, plan, sequence, batch: false);
            if (mode == LogitsMode.All)
            {
                EnqueueLogits(s, 0, n);
                if (logits != null) s.Logits.Download(logits.AsSpan(start * vocab, n * vocab));
                lastRow = s.Logits.Pointer + (ulong)((long)(n - 1) * vocab * sizeof(float));
            }
            else if (last)
            {
                EnqueueLogits(s, n - 1, 1);
                if (logits != null) s.Logits.Download(logits.AsSpan(0, vocab));
                lastRow = s.Logits.Pointer;
            }
            _device.Synchronize();
            cache.CheckDeviceState();
            cache.SetLength(sequence, cache.LengthOf(sequence) + n);
        }
        return lastRow;
    }

    /// <summary>Refuses running <paramref name="tokens"/> after sequence <paramref name="sequence"/>'s cached ones: none, a sequence outside the batch, past the capacity, an id outside the vocabulary.</summary>
    private void CheckRun(ReadOnlySpan<int> tokens, DeviceKvCache cache, int sequence)
    {
        if (tokens.Length == 0) throw new ArgumentException("no tokens to run", nameof(tokens));
        if ((uint)sequence >= (uint)cache.Batch) throw new KvSharpException($"sequence {sequence} is outside the cache's batch of {cache.Batch}");
        int length = cache.LengthOf(sequence);
        if (length + tokens.Length > cache.Capacity)
            throw new KvSharpException($"{length} cached + {tokens.Length} new tokens exceed the CUDA KV cache capacity {cache.Capacity}");
        foreach (int id in tokens)
            if ((uint)id >= (uint)Config.VocabSize) throw new KvSharpException($"token id {id} is outside the vocabulary (0..{Config.VocabSize - 1})");
    }

    /// <summary>
    /// Greedy generation: runs <paramref name="prompt"/>, then produces up to <paramref name="maxNewTokens"/>
    /// tokens, each from one replay of the captured decode step; stops after any of <paramref name="stopTokens"/>.
    /// </summary>
    public IReadOnlyList<int> GenerateGreedy(ReadOnlySpan<int> prompt, int maxNewTokens, DeviceKvCache cache, IReadOnlySet<int>? stopTokens = null)
    {
        if (cache.Batch != 1) throw new KvSharpException($"GenerateGreedy runs one sequence; this cache holds {cache.Batch} (use GenerateGreedyBatch)");
        var result = new List<int>();
        if (maxNewTokens <= 0) return result;
        var logits = Forward(prompt, cache);
        int token = ArgMax(logits);
        result.Add(token);
        int start = cache.Length;
        int steps = Math.Min(maxNewTokens - 1, cache.Capacity - cache.Length);
        if (stopTokens != null && stopTokens.Contains(token)) return result;
        BeginDecode(cache, [token]);
        var next = new int[1];
        for (int i = 0; i < steps; i++)
        {
            _decodeGraph!.Launch();
            cache.Length++;
            if (stopTokens == null) continue;
            cache.Next.Download<int>(next);
            if (stopTokens.Contains(next[0])) { steps = i + 1; break; }
        }
        _device.Synchronize();
        cache.CheckDeviceState();
        if (steps > 0)
        {
            var produced = new int[steps];
            cache.History.Download<int>(produced, (long)start * sizeof(int));
            result.AddRange(produced);
        }
        return result;
    }

    /// <summary>
    /// Greedy generation of cache.Batch sequences together: each prompt is prefilled into its own sequence of
    /// <paramref name="cache"/>, then every decode step (one graph replay) produces the next token of all of them,
    /// the matrix-vector products reading each weight once for the whole batch. Returns
    /// <paramref name="maxNewTokens"/> tokens per sequence (fewer when a sequence would outgrow the capacity).
    /// </summary>
    public int[][] GenerateGreedyBatch(IReadOnlyList<int[]> prompts, int maxNewTokens, DeviceKvCache cache)
    {
        int batch = cache.Batch;
        if (prompts.Count != batch) throw new KvSharpException($"{prompts.Count} prompts for a cache of {batch} sequences");
        if (maxNewTokens <= 0) return prompts.Select(_ => Array.Empty<int>()).ToArray();
        var first = new int[batch];
        for (int i = 0; i < batch; i++) first[i] = ArgMax(Forward(prompts[i], cache, LogitsMode.Last, i));
        var starts = Enumerable.Range(0, batch).Select(cache.LengthOf).ToArray();
        int steps = Math.Min(maxNewTokens - 1, cache.Capacity - starts.Max());
        if (steps > 0)
        {
            BeginDecode(cache, first);
            EnqueueDecodeSteps(cache, steps);
        }
        _device.Synchronize();
        cache.CheckDeviceState(); // a full pool or table seen only on the device
        var history = new int[batch * cache.Capacity];
        if (steps > 0) cache.History.Download<int>(history);
        return Enumerable.Range(0, batch)
            .Select(i => new[] { first[i] }.Concat(history.AsSpan(i * cache.Capacity + starts[i], Math.Max(0, steps)).ToArray()).ToArray())
            .ToArray();
    }

    /// <summary>
    /// Prepares <paramref name="cache"/> for graph decode of all its sequences from their current lengths, with
    /// <paramref name="tokens"/> (one per sequence) as the next inputs, capturing the decode step for this cache if needed.
    /// </summary>
    internal void BeginDecode(DeviceKvCache cache, ReadOnlySpan<int> tokens)
    {
        int batch = cache.Batch;
        if (tokens.Length != batch) throw new KvSharpException($"{tokens.Length} next tokens for a cache of {batch} sequences");
        _device.MakeCurrent();
        var lengths = Enumerable.Range(0, batch).Select(cache.LengthOf).ToArray();
        cache.Position.Upload<int>(lengths);
        cache.Next.Upload(tokens);
        if (!GraphIsCurrent(cache, null)) Capture(cache, null);
        _graphLength = -1; // the next sampled step uploads its token and position
    }

    /// <summary>
    /// Whether the captured decode graph is one of <paramref name="cache"/> ending in <paramref name="sampler"/> (null: the
    /// greedy head), with the buffers and attention plan it was captured with.
    /// </summary>
    private bool GraphIsCurrent(DeviceKvCache cache, CudaSampler? sampler) =>
        _decodeGraph != null && _graphCache == cache && _graphSampler == sampler && (sampler == null || _graphSamplerVersion == sampler.Version)
        && _graphPlan == cache.PlanAttention(_kernels, cache.Capacity, cache.Batch);

    /// <summary>
    /// Captures one decode step of all of <paramref name="cache"/>'s sequences as the decode graph: the layers over the
    /// device-side tokens and positions, then the greedy output head (argmax; token, history and position updated on the
    /// device) or, with <paramref name="sampler"/> (one sequence), the logits and the sampler's kernels.
    /// </summary>
    private void Capture(DeviceKvCache cache, CudaSampler? sampler)
    {
        int batch = cache.Batch;
        var s = ScratchFor(batch, cache, batch);
        var plan = cache.PlanAttention(_kernels, cache.Capacity, batch);
        EnsurePartials(s, batch, plan);
        _decodeGraph?.Dispose();
        _decodeGraph = CudaGraph.Capture(_device, () =>
        {
            EnqueueLayers(s, cache, batch, cache.Next.Pointer, plan, 0, batch: true);
            if (sampler != null)
            {
                EnqueueLogits(s, 0, 1);
                sampler.Enqueue(s.Logits.Pointer, cache.Next.Pointer);
                sampler.EnqueueCommit(cache.Next.Pointer, cache.History.Pointer, cache.Position.Pointer);
                return;
            }
            if (batch <= CudaKernels.MaxGemvRows && FuseArgMaxIntoHead)
            {
                _kernels.GemvArgMax(_output.Type, _output.Pointer, s.X.Pointer, s.Logits.Pointer, _output.Rows, Config.HiddenSize,
                    _outputNorm.Pointer, Config.RmsNormEps, s.Best.Pointer, batch);
                _kernels.ArgMaxFinish(s.Best.Pointer, cache.Next.Pointer, cache.History.Pointer, cache.Position.Pointer, 1, batch, cache.Capacity);
                return;
            }
            EnqueueLogits(s, 0, batch);
            _kernels.ArgMax(s.Logits.Pointer, Config.VocabSize, cache.Next.Pointer, cache.History.Pointer, cache.Position.Pointer, 1,
                batch, cache.Capacity);
        });
        _graphCache = cache;
        _graphPlan = plan; // a cache's plan can change (the pipelined kernel's rings after a re-quantization into larger blocks)
        _graphSampler = sampler;
        _graphSamplerVersion = sampler?.Version ?? 0;
        _graphLength = -1;
    }

    /// <summary>Queues <paramref name="steps"/> graph decode steps (after <see cref="BeginDecode"/>) without waiting.</summary>
    internal void EnqueueDecodeSteps(DeviceKvCache cache, int steps)
    {
        for (int i = 0; i < cache.Batch; i++)
            if (cache.LengthOf(i) + steps > cache.Capacity) throw new KvSharpException($"{steps} decode steps exceed the cache capacity {cache.Capacity}");
        for (int i = 0; i < steps; i++) _decodeGraph!.Launch();
        for (int i = 0; i < cache.Batch; i++) cache.SetLength(i, cache.LengthOf(i) + steps);
    }

    /// <summary>Whether n rows take the prefill path with the tensor-core attention (else the decode kernels).</summary>
    private bool UsesFlash(int n, DeviceKvCache cache) => n > CudaKernels.MaxGemvRows && CudaKernels.FlashAttention(Config.HeadDim) && cache.SupportsFlashPrefill;

    /// <summary>
    /// Queues the decoder layers for n rows: X holds the residual stream; the final norm is left to
    /// <see cref="EnqueueLogits"/>. The rows are consecutive tokens of sequence <paramref name="sequence"/>, or with
    /// <paramref name="batch"/> one token of each sequence of the cache. Per layer: QKV product of the normed stream,
    /// q/k norm + RoPE + cache append, attention, output product added to X, gate/up product of the normed stream
    /// with SwiGLU, down product added to X. Up to 8 rows the norms are fused into the matrix-vector products;
    /// longer prefill chunks norm explicitly, multiply with cuBLAS and use the tensor-core attention.
    /// </summary>
    private void EnqueueLayers(Scratch s, DeviceKvCache cache, int n, ulong tokens, CudaKernels.AttentionPlan plan, int sequence, bool batch)
    {
        var c = Config;
        int d = c.HiddenSize, hd = c.HeadDim, qkvDim = (c.NumHeads + 2 * c.NumKvHeads) * hd, ffn = c.IntermediateSize;
        ulong pos = cache.Position.Pointer + (ulong)(batch ? 0 : sequence * sizeof(int));
        bool gemv = n <= CudaKernels.MaxGemvRows, flash = UsesFlash(n, cache);
        var k = _kernels;
        bool interleaved = c.RopeStyle == RopeStyle.Interleaved;
        k.Embed(_embedding.Type, _embedding.Pointer, tokens, s.X.Pointer, n, d);
        for (int l = 0; l < _layers.Length; l++)
        {
            var L = _layers[l];
            bool appended = (n == 1 || batch) && gemv && FuseRopeIntoQkv && L.QkvBias == null && L.QNorm == null && L.KNorm == null
                && cache.EnqueueFusedQkv(k, new FusedQkv(l, batch ? 0 : sequence, L.Qkv, s.X.Pointer, L.AttnNorm.Pointer, c.RmsNormEps, s.Q.Pointer,
                    _invFreq.Pointer, pos, interleaved, n, batch, L.AttnOutput));
            if (!appended && gemv)
                k.Gemv(L.Qkv.Type, L.Qkv.Pointer, s.X.Pointer, s.Qkv.Pointer, L.Qkv.Rows, d, n, CudaKernels.GemvMode.Store, L.AttnNorm.Pointer, c.RmsNormEps);
            else if (!appended)
            {
                k.RmsNorm(s.X.Pointer, L.AttnNorm.Pointer, s.Xb.Pointer, n, d, c.RmsNormEps);
                MatMul(L.Qkv, s.Xb, s.Qkv, n, s);
            }
            if (L.QkvBias != null) k.AddBias(s.Qkv.Pointer, L.QkvBias.Pointer, qkvDim, (long)n * qkvDim);
            bool projected = cache.EnqueueAttention(k, new LayerAttention(l, s.Qkv.Pointer, s.Q.Pointer, L.QNorm?.Pointer ?? Arg.Null,
                L.KNorm?.Pointer ?? Arg.Null, _invFreq.Pointer, s.Att.Pointer, s.PartOut?.Pointer ?? Arg.Null, s.PartMl?.Pointer ?? Arg.Null,
                s.Counters.Pointer, n, interleaved, c.RmsNormEps, plan, pos, sequence, batch, flash, appended,
                gemv && PrefetchNextWeights ? new L2Prefetch(L.AttnOutput.Pointer, L.AttnOutput.Buffer.ByteLength) : default, s.X.Pointer,
                gemv && L.AttnOutput.Cols == c.NumHeads * hd ? L.AttnOutput : null));
            if (!projected && !cache.EnqueueOutputProduct(k, l, L.AttnOutput, s.Att.Pointer, s.X.Pointer, n))
                MatMul(L.AttnOutput, s.Att, s.X, n, s, accumulate: true);
            // 16-bit activations between the two products where both take tensor cores (the same bits, half the bytes)
            bool narrow = k.UsesNarrowFfn(L.GateUp.Type, d, L.Down.Type, ffn, n);
            if (gemv)
            {
                k.Gemv(L.GateUp.Type, L.GateUp.Pointer, s.X.Pointer, s.Gate.Pointer, ffn, d, n, CudaKernels.GemvMode.SwiGlu, L.FfnNorm.Pointer, c.RmsNormEps,
                    narrow);
            }
            else
            {
                k.RmsNorm(s.X.Pointer, L.FfnNorm.Pointer, s.Xb.Pointer, n, d, c.RmsNormEps);
                MatMul(L.GateUp, s.Xb, s.GateUp, n, s);
                k.SwiGluRows(s.GateUp.Pointer, s.Gate.Pointer, ffn, n);
            }
            MatMul(L.Down, s.Gate, s.X, n, s, accumulate: true, narrow);
        }
    }

    /// <summary>Final norm and output head for rows first .. first+count-1 of X, into Logits (norm fused up to 8 rows).</summary>
    private void EnqueueLogits(Scratch s, int first, int count)
    {
        int d = Config.HiddenSize;
        ulong x = s.X.Pointer + (ulong)((long)first * d * 4);
        if (count <= CudaKernels.MaxGemvRows)
        {
            _kernels.Gemv(_output.Type, _output.Pointer, x, s.Logits.Pointer, _output.Rows, d, count, CudaKernels.GemvMode.Store,
                _outputNorm.Pointer, Config.RmsNormEps);
            return;
        }
        _kernels.RmsNorm(x, _outputNorm.Pointer, s.Xb.Pointer, count, d, Config.RmsNormEps);
        MatMul(_output, s.Xb, s.Logits, count, s);
    }

    /// <summary>
    /// y (=, or += with <paramref name="accumulate"/>) x · wᵀ: matrix-vector kernels up to 8 rows (x in the weights' 16-bit
    /// type where <paramref name="narrow"/>: <see cref="CudaKernels.Gemv"/>), cuBLAS beyond.
    /// </summary>
    private void MatMul(DeviceMatrix w, DeviceBuffer x, DeviceBuffer y, int n, Scratch s, bool accumulate = false, bool narrow = false)
    {
        if (n <= CudaKernels.MaxGemvRows)
        {
            _kernels.Gemv(w.Type, w.Pointer, x.Pointer, y.Pointer, w.Rows, w.Cols, n,
                accumulate ? CudaKernels.GemvMode.Accumulate : CudaKernels.GemvMode.Store, narrow: narrow);
            return;
        }
        ulong operand = x.Pointer;
        if (w.Type != DeviceWeightType.F32)
        {
            _kernels.Narrow(w.Type, x.Pointer, s.Narrow.Pointer, (long)n * w.Cols);
            operand = s.Narrow.Pointer;
        }
        int dataType = w.Type switch
        {
            DeviceWeightType.BF16 => Native.CublasApi.DataBF16,
            DeviceWeightType.F16 => Native.CublasApi.DataF16,
            _ => Native.CublasApi.DataF32,
        };
        _blas.MatMul(w.Pointer, operand, y.Pointer, w.Rows, w.Cols, n, dataType, accumulate);
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    /// <summary>Activation buffers for up to Rows rows (grown on demand, never inside a graph capture).</summary>
    private sealed class Scratch(CudaDevice device, ModelConfig c, int rows, int logitRows) : IDisposable
    {
        public int Rows => rows;
        public int LogitRows => logitRows;
        public readonly int[] Host = new int[2];
        public readonly DeviceBuffer Tokens = device.Allocate(rows * sizeof(int));
        public readonly DeviceBuffer X = device.Allocate((long)rows * c.HiddenSize * 4);
        public readonly DeviceBuffer Xb = device.Allocate((long)rows * c.HiddenSize * 4);
        public readonly DeviceBuffer Qkv = device.Allocate((long)rows * (c.NumHeads + 2 * c.NumKvHeads) * c.HeadDim * 4);
        public readonly DeviceBuffer Q = device.Allocate((long)rows * c.NumHeads * c.HeadDim * 4);
        public readonly DeviceBuffer Att = device.Allocate((long)rows * c.NumHeads * c.HeadDim * 4);
        public readonly DeviceBuffer GateUp = device.Allocate((long)(rows > CudaKernels.MaxGemvRows ? rows : 1) * 2 * c.IntermediateSize * 4);
        public readonly DeviceBuffer Gate = device.Allocate((long)rows * c.IntermediateSize * 4);
        public readonly DeviceBuffer Narrow = device.Allocate((long)rows * Math.Max(Math.Max(c.HiddenSize, c.IntermediateSize), c.NumHeads * c.HeadDim) * 2);
        public readonly DeviceBuffer Logits = device.Allocate((long)logitRows * c.VocabSize * 4);
        public readonly DeviceBuffer Counters = ZeroedCounters(device, rows * c.NumKvHeads);
        public readonly DeviceBuffer Best = ZeroedCounters(device, 2 * logitRows); // 64-bit greedy keys, cleared by each use
        public DeviceBuffer? PartOut, PartMl;

        public void Dispose()
        {
            foreach (var b in new[] { Tokens, X, Xb, Qkv, Q, Att, GateUp, Gate, Narrow, Logits, Counters, Best, PartOut, PartMl }) b?.Dispose();
        }

        /// <summary>Counters (attention's per-(row, KV head) chunks, the greedy keys): zero once, and every launch leaves them zero.</summary>
        private static DeviceBuffer ZeroedCounters(CudaDevice device, int count)
        {
            var b = device.Allocate(count * sizeof(int));
            b.Fill32(0);
            return b;
        }
    }

    private Scratch ScratchFor(int rows, DeviceKvCache cache, int logitRows)
    {
        if (cache.Config != Config) throw new KvSharpException("the CUDA KV cache was created for another model");
        if (_scratch != null && _scratch.Rows >= rows && _scratch.LogitRows >= logitRows) return _scratch;
        int newRows = Math.Max(rows, _scratch?.Rows ?? 0), newLogitRows = Math.Max(logitRows, _scratch?.LogitRows ?? 0);
        DropGraph();
        _scratch?.Dispose();
        _scratch = new Scratch(_device, Config, newRows, newLogitRows);
        return _scratch;
    }

    private void EnsurePartials(Scratch s, int rows, CudaKernels.AttentionPlan plan)
    {
        long needed = (long)rows * Config.NumHeads * plan.Splits;
        if (s.PartMl != null && s.PartMl.ByteLength >= needed * 8) return;
        DropGraph();
        s.PartOut?.Dispose();
        s.PartMl?.Dispose();
        s.PartOut = _device.Allocate(needed * Config.HeadDim * 4);
        s.PartMl = _device.Allocate(needed * 8);
    }

    private void DropGraph()
    {
        _decodeGraph?.Dispose();
        _decodeGraph = null;
        _graphCache = null;
        _graphSampler = null;
        _graphLength = -1;
    }

    /// <summary>Q, K and V biases stacked like the QKV matrix (zeros for a missing part), or null when the model has none.</summary>
    private DeviceBuffer? QkvBias(ModelWeights weights, int layer, int qDim, int kvDim)
    {
        var q = Vector(weights, TensorNames.Layer(layer, TensorNames.Suffix.QBias), qDim, optional: true);
        var k = Vector(weights, TensorNames.Layer(layer, TensorNames.Suffix.KBias), kvDim, optional: true);
        var v = Vector(weights, TensorNames.Layer(layer, TensorNames.Suffix.VBias), kvDim, optional: true);
        if (q == null && k == null && v == null) return null;
        var bias = new float[qDim + 2 * kvDim];
        q?.CopyTo(bias, 0);
        k?.CopyTo(bias, qDim);
        v?.CopyTo(bias, qDim + kvDim);
        return Own(DeviceWeights.Vector(_device, bias));
    }

    private static float[]? Vector(ModelWeights weights, string name, int length, bool optional = false)
    {
        var t = weights.Find(name);
        if (t == null) return optional ? null : throw new ModelFormatException(weights.Source, $"missing tensor '{name}'");
        if (t.ElementCount != length)
            throw new ModelFormatException(weights.Source, $"tensor '{name}' has {t.ElementCount} elements, expected {length}");
        var v = new float[length];
        unsafe { Dequantize.Block(t.Type, t.Data, v); }
        return v;
    }

    private T Own<T>(T resource) where T : IDisposable
    {
        _owned.Add(resource);
        return resource;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        DropGraph();
        _scratch?.Dispose();
        _scratch = null;
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }
}
