using KvSharp.Compute.Cpu;
using KvSharp.Compute.Cuda.Runtime;
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
    private CudaKvCache? _graphCache;

    private sealed record Layer(
        DeviceBuffer AttnNorm, DeviceMatrix Q, DeviceMatrix K, DeviceMatrix V, DeviceBuffer? QBias, DeviceBuffer? KBias, DeviceBuffer? VBias,
        DeviceBuffer? QNorm, DeviceBuffer? KNorm, DeviceMatrix AttnOutput, DeviceBuffer FfnNorm, DeviceMatrix Gate, DeviceMatrix Up, DeviceMatrix Down);

    /// <summary>Uploads <paramref name="weights"/> to <paramref name="device"/> with matrices in <paramref name="weightType"/>.</summary>
    public CudaTransformer(CudaDevice device, ModelWeights weights, DeviceWeightType weightType = DeviceWeightType.BF16)
    {
        var c = weights.Config;
        c.Validate(weights.Source);
        if (c.GroupSize > CudaKernels.MaxGroup)
            throw new KvSharpException($"{weights.Source}: {c.GroupSize} query heads per KV head exceed the CUDA backend's {CudaKernels.MaxGroup}");
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
                DeviceMatrix M(string s, int rows, int cols) => Own(DeviceWeights.Matrix(device, weights.Require(N(s)), rows, cols, weightType));
                DeviceBuffer? V(string s, int length, bool optional = false) =>
                    Vector(weights, N(s), length, optional) is { } v ? Own(DeviceWeights.Vector(device, v)) : null;
                _layers[l] = new Layer(
                    V(TensorNames.Suffix.AttnNorm, c.HiddenSize)!,
                    M(TensorNames.Suffix.Q, qDim, c.HiddenSize), M(TensorNames.Suffix.K, kvDim, c.HiddenSize), M(TensorNames.Suffix.V, kvDim, c.HiddenSize),
                    V(TensorNames.Suffix.QBias, qDim, true), V(TensorNames.Suffix.KBias, kvDim, true), V(TensorNames.Suffix.VBias, kvDim, true),
                    c.QkNorm ? V(TensorNames.Suffix.QNorm, c.HeadDim) : null, c.QkNorm ? V(TensorNames.Suffix.KNorm, c.HeadDim) : null,
                    M(TensorNames.Suffix.AttnOutput, c.HiddenSize, qDim),
                    V(TensorNames.Suffix.FfnNorm, c.HiddenSize)!,
                    M(TensorNames.Suffix.FfnGate, c.IntermediateSize, c.HiddenSize), M(TensorNames.Suffix.FfnUp, c.IntermediateSize, c.HiddenSize),
                    M(TensorNames.Suffix.FfnDown, c.HiddenSize, c.IntermediateSize));
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
    public int PrefillChunk { get; init; } = 512;

    /// <summary>Bytes of weight matrices one decoded token reads (every layer's matrices and the output head).</summary>
    public long WeightBytesReadPerToken =>
        _layers.Sum(L => new[] { L.Q, L.K, L.V, L.AttnOutput, L.Gate, L.Up, L.Down }.Sum(m => m.Buffer.ByteLength)) + _output.Buffer.ByteLength;

    internal CudaKernels Kernels => _kernels;

    /// <summary>An empty device cache for up to <paramref name="capacity"/> tokens.</summary>
    public CudaKvCache CreateCache(int capacity) => new(_device, Config, capacity);

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions cache.Length.. and appends their keys and values to
    /// <paramref name="cache"/>. Returns logits: [vocab] for the last token, or [tokens, vocab] with <see cref="LogitsMode.All"/>.
    /// </summary>
    public float[] Forward(ReadOnlySpan<int> tokens, CudaKvCache cache, LogitsMode mode = LogitsMode.Last)
    {
        if (tokens.Length == 0) throw new ArgumentException("no tokens to run", nameof(tokens));
        if (cache.Length + tokens.Length > cache.Capacity)
            throw new KvSharpException($"{cache.Length} cached + {tokens.Length} new tokens exceed the CUDA KV cache capacity {cache.Capacity}");
        foreach (int id in tokens)
            if ((uint)id >= (uint)Config.VocabSize) throw new KvSharpException($"token id {id} is outside the vocabulary (0..{Config.VocabSize - 1})");
        _device.MakeCurrent();
        int vocab = Config.VocabSize;
        var logits = new float[mode == LogitsMode.All ? tokens.Length * vocab : vocab];
        for (int start = 0; start < tokens.Length; start += PrefillChunk)
        {
            int n = Math.Min(PrefillChunk, tokens.Length - start);
            bool last = start + n == tokens.Length;
            var s = ScratchFor(n, cache, mode == LogitsMode.All ? n : 1);
            s.Tokens.Upload(tokens.Slice(start, n));
            s.Host[0] = cache.Length;
            cache.Position.Upload<int>(s.Host.AsSpan(0, 1));
            var plan = _kernels.PlanAttention(cache.Length + n, n, Config.NumHeads, Config.NumKvHeads, Config.HeadDim);
            EnsurePartials(s, n, plan);
            EnqueueLayers(s, cache, n, s.Tokens.Pointer, plan);
            if (mode == LogitsMode.All)
            {
                EnqueueLogits(s, 0, n);
                s.Logits.Download(logits.AsSpan(start * vocab, n * vocab));
            }
            else if (last)
            {
                EnqueueLogits(s, n - 1, 1);
                s.Logits.Download(logits.AsSpan(0, vocab));
            }
            _device.Synchronize();
            cache.Length += n;
        }
        return logits;
    }

    /// <summary>
    /// Greedy generation: runs <paramref name="prompt"/>, then produces up to <paramref name="maxNewTokens"/>
    /// tokens, each from one replay of the captured decode step; stops after any of <paramref name="stopTokens"/>.
    /// </summary>
    public IReadOnlyList<int> GenerateGreedy(ReadOnlySpan<int> prompt, int maxNewTokens, CudaKvCache cache, IReadOnlySet<int>? stopTokens = null)
    {
        var result = new List<int>();
        if (maxNewTokens <= 0) return result;
        var logits = Forward(prompt, cache);
        int token = ArgMax(logits);
        result.Add(token);
        int start = cache.Length;
        int steps = Math.Min(maxNewTokens - 1, cache.Capacity - cache.Length);
        if (stopTokens != null && stopTokens.Contains(token)) return result;
        BeginDecode(cache, token);
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
        if (steps > 0)
        {
            var produced = new int[steps];
            cache.History.Download<int>(produced, (long)start * sizeof(int));
            result.AddRange(produced);
        }
        return result;
    }

    /// <summary>
    /// Prepares <paramref name="cache"/> for graph decode from its current length with <paramref name="token"/>
    /// as the next input, capturing the decode step for this cache if needed.
    /// </summary>
    internal void BeginDecode(CudaKvCache cache, int token)
    {
        _device.MakeCurrent();
        var s = ScratchFor(1, cache, 1);
        var plan = _kernels.PlanAttention(cache.Capacity, 1, Config.NumHeads, Config.NumKvHeads, Config.HeadDim);
        EnsurePartials(s, 1, plan);
        s.Host[0] = cache.Length;
        s.Host[1] = token;
        cache.Position.Upload<int>(s.Host.AsSpan(0, 1));
        cache.Next.Upload<int>(s.Host.AsSpan(1, 1));
        if (_graphCache != cache || _decodeGraph == null)
        {
            _decodeGraph?.Dispose();
            _decodeGraph = CudaGraph.Capture(_device, () =>
            {
                EnqueueLayers(s, cache, 1, cache.Next.Pointer, plan);
                EnqueueLogits(s, 0, 1);
                _kernels.ArgMax(s.Logits.Pointer, Config.VocabSize, cache.Next.Pointer, cache.History.Pointer, cache.Position.Pointer, 1);
            });
            _graphCache = cache;
        }
    }

    /// <summary>Queues <paramref name="steps"/> graph decode steps (after <see cref="BeginDecode"/>) without waiting.</summary>
    internal void EnqueueDecodeSteps(CudaKvCache cache, int steps)
    {
        if (cache.Length + steps > cache.Capacity) throw new KvSharpException($"{steps} decode steps exceed the cache capacity {cache.Capacity}");
        for (int i = 0; i < steps; i++) _decodeGraph!.Launch();
        cache.Length += steps;
    }

    private void EnqueueLayers(Scratch s, CudaKvCache cache, int n, ulong tokens, CudaKernels.AttentionPlan plan)
    {
        var c = Config;
        int d = c.HiddenSize, hd = c.HeadDim, qDim = c.NumHeads * hd, kvDim = c.NumKvHeads * hd, ffn = c.IntermediateSize;
        ulong pos = cache.Position.Pointer;
        var k = _kernels;
        k.Embed(_embedding.Type, _embedding.Pointer, tokens, s.X.Pointer, n, d);
        for (int l = 0; l < _layers.Length; l++)
        {
            var L = _layers[l];
            k.RmsNorm(s.X.Pointer, L.AttnNorm.Pointer, s.Xb.Pointer, n, d, c.RmsNormEps);
            MatMul(L.Q, s.Xb, s.Q, n, s);
            MatMul(L.K, s.Xb, s.K, n, s);
            MatMul(L.V, s.Xb, s.V, n, s);
            if (L.QBias != null) k.AddBias(s.Q.Pointer, L.QBias.Pointer, qDim, (long)n * qDim);
            if (L.KBias != null) k.AddBias(s.K.Pointer, L.KBias.Pointer, kvDim, (long)n * kvDim);
            if (L.VBias != null) k.AddBias(s.V.Pointer, L.VBias.Pointer, kvDim, (long)n * kvDim);
            if (L.QNorm != null) k.RmsNorm(s.Q.Pointer, L.QNorm.Pointer, s.Q.Pointer, n * c.NumHeads, hd, c.RmsNormEps);
            if (L.KNorm != null) k.RmsNorm(s.K.Pointer, L.KNorm.Pointer, s.K.Pointer, n * c.NumKvHeads, hd, c.RmsNormEps);
            bool interleaved = c.RopeStyle == RopeStyle.Interleaved;
            k.Rope(s.Q.Pointer, _invFreq.Pointer, n, c.NumHeads, hd, pos, interleaved);
            k.Rope(s.K.Pointer, _invFreq.Pointer, n, c.NumKvHeads, hd, pos, interleaved);
            k.KvAppend(s.K.Pointer, s.V.Pointer, cache.Keys(l), cache.Values(l), n, c.NumKvHeads, hd, cache.Capacity, pos);
            k.Attention(s.Q.Pointer, cache.Keys(l), cache.Values(l), s.Att.Pointer, s.PartOut!.Pointer, s.PartMl!.Pointer,
                n, c.NumHeads, c.NumKvHeads, hd, cache.Capacity, pos, plan);
            MatMul(L.AttnOutput, s.Att, s.Xb, n, s);
            k.Add(s.X.Pointer, s.Xb.Pointer, (long)n * d);
            k.RmsNorm(s.X.Pointer, L.FfnNorm.Pointer, s.Xb.Pointer, n, d, c.RmsNormEps);
            MatMul(L.Gate, s.Xb, s.Gate, n, s);
            MatMul(L.Up, s.Xb, s.Up, n, s);
            k.SwiGlu(s.Gate.Pointer, s.Up.Pointer, (long)n * ffn);
            MatMul(L.Down, s.Gate, s.Xb, n, s);
            k.Add(s.X.Pointer, s.Xb.Pointer, (long)n * d);
        }
    }

    /// <summary>Final norm and output head for rows first .. first+count-1 of X, into Logits.</summary>
    private void EnqueueLogits(Scratch s, int first, int count)
    {
        int d = Config.HiddenSize;
        _kernels.RmsNorm(s.X.Pointer + (ulong)((long)first * d * 4), _outputNorm.Pointer, s.Xb.Pointer, count, d, Config.RmsNormEps);
        MatMul(_output, s.Xb, s.Logits, count, s);
    }

    private void MatMul(DeviceMatrix w, DeviceBuffer x, DeviceBuffer y, int n, Scratch s)
    {
        if (n <= CudaKernels.MaxGemvRows)
        {
            _kernels.Gemv(w.Type, w.Pointer, x.Pointer, y.Pointer, w.Rows, w.Cols, n);
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
        _blas.MatMul(w.Pointer, operand, y.Pointer, w.Rows, w.Cols, n, dataType);
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
        public readonly DeviceBuffer Xb = device.Allocate((long)rows * Math.Max(c.HiddenSize, c.NumHeads * c.HeadDim) * 4);
        public readonly DeviceBuffer Q = device.Allocate((long)rows * c.NumHeads * c.HeadDim * 4);
        public readonly DeviceBuffer K = device.Allocate((long)rows * c.NumKvHeads * c.HeadDim * 4);
        public readonly DeviceBuffer V = device.Allocate((long)rows * c.NumKvHeads * c.HeadDim * 4);
        public readonly DeviceBuffer Att = device.Allocate((long)rows * c.NumHeads * c.HeadDim * 4);
        public readonly DeviceBuffer Gate = device.Allocate((long)rows * c.IntermediateSize * 4);
        public readonly DeviceBuffer Up = device.Allocate((long)rows * c.IntermediateSize * 4);
        public readonly DeviceBuffer Narrow = device.Allocate((long)rows * Math.Max(Math.Max(c.HiddenSize, c.IntermediateSize), c.NumHeads * c.HeadDim) * 2);
        public readonly DeviceBuffer Logits = device.Allocate((long)logitRows * c.VocabSize * 4);
        public DeviceBuffer? PartOut, PartMl;

        public void Dispose()
        {
            foreach (var b in new[] { Tokens, X, Xb, Q, K, V, Att, Gate, Up, Narrow, Logits, PartOut, PartMl }) b?.Dispose();
        }
    }

    private Scratch ScratchFor(int rows, CudaKvCache cache, int logitRows)
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
