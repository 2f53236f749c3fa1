using KvSharp.Cache;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Models;

/// <summary>Which positions of a forward pass produce logits.</summary>
public enum LogitsMode
{
    /// <summary>Only the last token (generation).</summary>
    Last,
    /// <summary>Every token (perplexity, KL, tests).</summary>
    All,
}

/// <summary>
/// A Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM2) configured entirely by
/// <see cref="ModelConfig"/>: RMSNorm, grouped-query attention with RoPE (either convention,
/// optional Llama-3 scaling), optional QKV bias and per-head q/k RMSNorm, SwiGLU feed-forward.
/// Weights are read in their stored precision; activations are float32.
/// </summary>
public sealed unsafe class Transformer
{
    private readonly ModelWeights _weights;
    private readonly Rope _rope;
    private readonly GgmlRope? _ggmlRope;
    private readonly bool _llamaCpp;
    private readonly Layer[] _layers;
    private readonly float[] _outputNorm;
    private readonly TensorView _embedding, _output;

    private sealed record Layer(
        float[] AttnNorm, TensorView Q, TensorView K, TensorView V, float[]? QBias, float[]? KBias, float[]? VBias,
        float[]? QNorm, float[]? KNorm, TensorView AttnOutput, float[] FfnNorm, TensorView Gate, TensorView Up, TensorView Down);

    /// <summary>
    /// Binds the transformer to <paramref name="weights"/> (which must outlive it), computing with <paramref name="numerics"/>
    /// (<see cref="CpuNumerics.LlamaCpp"/> refuses RoPE scaling with a <see cref="KvSharpException"/>).
    /// </summary>
    public Transformer(ModelWeights weights, CpuNumerics numerics = CpuNumerics.Fast)
    {
        _weights = weights;
        var c = Config;
        c.Validate(weights.Source);
        _rope = new Rope(c);
        Numerics = numerics;
        _llamaCpp = numerics == CpuNumerics.LlamaCpp;
        if (_llamaCpp) _ggmlRope = new GgmlRope(c);
        _embedding = weights.Require(TensorNames.TokenEmbedding);
        _output = weights.Find(TensorNames.Output) ?? _embedding;
        _outputNorm = Vector(TensorNames.OutputNorm, c.HiddenSize)!;
        _layers = new Layer[c.NumLayers];
        for (int l = 0; l < c.NumLayers; l++)
        {
            string N(string s) => TensorNames.Layer(l, s);
            _layers[l] = new Layer(
                Vector(N(TensorNames.Suffix.AttnNorm), c.HiddenSize)!,
                Matrix(N(TensorNames.Suffix.Q), c.NumHeads * c.HeadDim, c.HiddenSize),
                Matrix(N(TensorNames.Suffix.K), c.NumKvHeads * c.HeadDim, c.HiddenSize),
                Matrix(N(TensorNames.Suffix.V), c.NumKvHeads * c.HeadDim, c.HiddenSize),
                Vector(N(TensorNames.Suffix.QBias), c.NumHeads * c.HeadDim, optional: true),
                Vector(N(TensorNames.Suffix.KBias), c.NumKvHeads * c.HeadDim, optional: true),
                Vector(N(TensorNames.Suffix.VBias), c.NumKvHeads * c.HeadDim, optional: true),
                c.QkNorm ? Vector(N(TensorNames.Suffix.QNorm), c.HeadDim) : null,
                c.QkNorm ? Vector(N(TensorNames.Suffix.KNorm), c.HeadDim) : null,
                Matrix(N(TensorNames.Suffix.AttnOutput), c.HiddenSize, c.NumHeads * c.HeadDim),
                Vector(N(TensorNames.Suffix.FfnNorm), c.HiddenSize)!,
                Matrix(N(TensorNames.Suffix.FfnGate), c.IntermediateSize, c.HiddenSize),
                Matrix(N(TensorNames.Suffix.FfnUp), c.IntermediateSize, c.HiddenSize),
                Matrix(N(TensorNames.Suffix.FfnDown), c.HiddenSize, c.IntermediateSize));
        }
    }

    /// <summary>The model's architecture.</summary>
    public ModelConfig Config => _weights.Config;

    /// <summary>The weights this transformer reads.</summary>
    public ModelWeights Weights => _weights;

    /// <summary>Tokens per prefill chunk: bounds activation memory for long prompts.</summary>
    public int PrefillChunk { get; init; } = 512;

    /// <summary>The CPU arithmetic of the forward pass.</summary>
    public CpuNumerics Numerics { get; }

    /// <summary>
    /// Creates this model's default empty cache: float32 (<see cref="FullPrecisionKvCache"/>), or llama.cpp's f16 cache
    /// (<see cref="GgmlF16KvCache"/>) under <see cref="CpuNumerics.LlamaCpp"/>.
    /// </summary>
    public IKvCache CreateCache(int maxTokens) =>
        _llamaCpp ? new GgmlF16KvCache(Config, maxTokens) : new FullPrecisionKvCache(Config, maxTokens);

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions cache.Length.. through the model, appending their
    /// keys and values to <paramref name="cache"/>. Returns logits: [vocab] for the last token, or
    /// [tokens, vocab] with <see cref="LogitsMode.All"/>. An <paramref name="observer"/> sees each layer's input residual.
    /// </summary>
    public float[] Forward(ReadOnlySpan<int> tokens, IKvCache cache, LogitsMode mode = LogitsMode.Last, IForwardObserver? observer = null) =>
        Run(tokens, cache, mode == LogitsMode.All ? Head.AllLogits : Head.LastLogits, observer);

    /// <summary>
    /// Runs <paramref name="tokens"/> as <see cref="Forward"/> does (appending their keys and values to
    /// <paramref name="cache"/>) but stops before the LM head: returns every token's final hidden state, the output of
    /// the final RMSNorm that the LM head multiplies, [tokens, hiddenSize]. What KVSharer compares between a model
    /// and its layer-sharing variant.
    /// </summary>
    public float[] ForwardHidden(ReadOnlySpan<int> tokens, IKvCache cache, IForwardObserver? observer = null) =>
        Run(tokens, cache, Head.AllHidden, observer);

    /// <summary>What a forward pass returns after the last layer.</summary>
    private enum Head
    {
        /// <summary>The last token's logits [vocab].</summary>
        LastLogits,
        /// <summary>Every token's logits [tokens, vocab].</summary>
        AllLogits,
        /// <summary>Every token's final-norm hidden state [tokens, hiddenSize], no LM head.</summary>
        AllHidden,
    }

    private float[] Run(ReadOnlySpan<int> tokens, IKvCache cache, Head head, IForwardObserver? observer)
    {
        if (tokens.Length == 0) throw new ArgumentException("no tokens to run", nameof(tokens));
        int width = head == Head.AllHidden ? Config.HiddenSize : Config.VocabSize;
        var output = new float[head == Head.LastLogits ? width : tokens.Length * width];
        for (int start = 0; start < tokens.Length; start += PrefillChunk)
        {
            int n = Math.Min(PrefillChunk, tokens.Length - start);
            bool last = start + n == tokens.Length;
            // Only the last chunk's last token needs logits in LastLogits mode: earlier chunks skip the head.
            var rows = head == Head.LastLogits ? (last ? output : Span<float>.Empty) : output.AsSpan(start * width, n * width);
            ForwardChunk(tokens.Slice(start, n), cache, rows, head, observer);
        }
        return output;
    }

    private void ForwardChunk(ReadOnlySpan<int> tokens, IKvCache cache, Span<float> output, Head head, IForwardObserver? observer)
    {
        var c = Config;
        int n = tokens.Length, d = c.HiddenSize, hd = c.HeadDim;
        int qDim = c.NumHeads * hd, kvDim = c.NumKvHeads * hd, ffn = c.IntermediateSize;
        int pos0 = cache.Length;

        var x = new float[n * d];
        var xb = new float[n * d];
        var q = new float[n * qDim];
        var k = new float[n * kvDim];
        var v = new float[n * kvDim];
        var att = new float[n * qDim];
        var gate = new float[n * ffn];
        var up = new float[n * ffn];
        // RoPE angles depend only on position: once per chunk, shared by q and k of every layer.
        int pairs = _rope.Pairs;
        var cos = new float[n * pairs];
        var sin = new float[n * pairs];
        if (_ggmlRope != null) _ggmlRope.Angles(pos0, n, cos, sin);
        else _rope.Angles(pos0, n, cos, sin);

        for (int t = 0; t < n; t++)
        {
            int id = tokens[t];
            if ((uint)id >= (uint)c.VocabSize) throw new KvSharpException($"token id {id} is outside the vocabulary (0..{c.VocabSize - 1})");
            Kernels.GetRow(_embedding, id, x.AsSpan(t * d, d));
        }

        for (int l = 0; l < _layers.Length; l++)
        {
            var L = _layers[l];
            observer?.LayerInput(l, x, n, pos0);
            RmsNorm(x, L.AttnNorm, xb);
            MatMul(L.Q, xb, q, n);
            MatMul(L.K, xb, k, n);
            MatMul(L.V, xb, v, n);
            for (int t = 0; t < n; t++)
            {
                var qt = q.AsSpan(t * qDim, qDim);
                var kt = k.AsSpan(t * kvDim, kvDim);
                if (L.QBias != null) Kernels.Add(qt, L.QBias);
                if (L.KBias != null) Kernels.Add(kt, L.KBias);
                if (L.VBias != null) Kernels.Add(v.AsSpan(t * kvDim, kvDim), L.VBias);
                if (L.QNorm != null) RmsNorm(qt, L.QNorm, qt);
                if (L.KNorm != null) RmsNorm(kt, L.KNorm, kt);
                var ct = cos.AsSpan(t * pairs, pairs);
                var st = sin.AsSpan(t * pairs, pairs);
                if (_ggmlRope != null)
                {
                    _ggmlRope.Apply(qt, ct, st);
                    _ggmlRope.Apply(kt, ct, st);
                }
                else
                {
                    _rope.Apply(qt, ct, st);
                    _rope.Apply(kt, ct, st);
                }
            }
            cache.Append(l, k, v, n);
            cache.Attend(l, q, n, pos0, att);
            MatMul(L.AttnOutput, att, xb, n);

            if (_llamaCpp && head == Head.LastLogits && l == _layers.Length - 1)
            {
                // llama.cpp's inp_out_ids: from the last layer's attention output on only the rows that give logits are
                // computed (none for a prompt chunk that is not the last), so its FFN runs as a batch of one, which
                // changes ggml's matrix kernel and so the rounding.
                if (output.IsEmpty) return;
                x.AsSpan((n - 1) * d, d).CopyTo(x);
                xb.AsSpan((n - 1) * d, d).CopyTo(xb);
                n = 1;
            }
            Kernels.Add(x.AsSpan(0, n * d), xb.AsSpan(0, n * d));

            RmsNorm(x.AsSpan(0, n * d), L.FfnNorm, xb);
            MatMul(L.Gate, xb, gate, n);
            MatMul(L.Up, xb, up, n);
            if (_llamaCpp) GgmlElementwise.SwiGlu(gate.AsSpan(0, n * ffn), up, ffn);
            else Kernels.SwiGlu(gate, up);
            MatMul(L.Down, gate, xb, n);
            Kernels.Add(x.AsSpan(0, n * d), xb.AsSpan(0, n * d));
        }

        if (output.IsEmpty) return;
        switch (head)
        {
            case Head.AllHidden:
                RmsNorm(x, _outputNorm, output);
                break;
            case Head.AllLogits:
                RmsNorm(x, _outputNorm, xb);
                MatMul(_output, xb, output, n);
                break;
            default:
                var lastRow = xb.AsSpan(0, d);
                RmsNorm(x.AsSpan((n - 1) * d, d), _outputNorm, lastRow);
                MatMul(_output, lastRow, output, 1);
                break;
        }
    }

    private void MatMul(TensorView w, ReadOnlySpan<float> x, Span<float> y, int n)
    {
        if (_llamaCpp) GgmlMatMul.Multiply(w, x, y, n);
        else Kernels.MatMul(w, x, y, n);
    }

    private void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> y)
    {
        if (_llamaCpp) GgmlElementwise.RmsNorm(x, weight, y, Config.RmsNormEps);
        else Kernels.RmsNorm(x, weight, y, Config.RmsNormEps);
    }

    private TensorView Matrix(string name, int rows, int cols)
    {
        var t = _weights.Require(name);
        if (t.Rows != rows || t.Cols != cols)
            throw new ModelFormatException(_weights.Source, $"tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{rows}, {cols}]");
        return t;
    }

    private float[]? Vector(string name, int length, bool optional = false)
    {
        var t = _weights.Find(name);
        if (t == null)
            return optional ? null : throw new ModelFormatException(_weights.Source, $"missing tensor '{name}'");
        if (t.ElementCount != length)
            throw new ModelFormatException(_weights.Source, $"tensor '{name}' has {t.ElementCount} elements, expected {length}");
        var v = new float[length];
        Dequantize.Block(t.Type, t.Data, v);
        return v;
    }
}
