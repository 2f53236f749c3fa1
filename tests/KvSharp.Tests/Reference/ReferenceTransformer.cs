using System.Numerics.Tensors;
using KvSharp.Models;

namespace KvSharp.Tests.Reference;

/// <summary>
/// The test oracle: a float64 forward pass of a Llama-family decoder (Llama / Mistral / Qwen2 / Qwen3),
/// written from the model definitions (Hugging Face's LlamaForCausalLM / Qwen2 / Qwen3 modeling code,
/// llama.cpp's interleaved "normal" RoPE for GGUF llama files), independently of the engine.
/// Every call recomputes full causal attention over the whole sequence from scratch: no KV cache,
/// no fusion, no float32 anywhere, so that any
/// disagreement with the engine is the engine's.
/// </summary>
public sealed class ReferenceTransformer
{
    private readonly ModelConfig _c;
    private readonly Func<string, double[]?> _w;
    private readonly double[] _invFreq;

    /// <summary>
    /// Creates the oracle over <paramref name="weights"/>: canonical tensor name
    /// (<see cref="TensorNames"/>) to its values, row-major [out, in] for linear layers, or null when absent.
    /// </summary>
    public ReferenceTransformer(ModelConfig config, Func<string, double[]?> weights)
    {
        _c = config;
        _w = weights;
        _invFreq = InverseFrequencies(config);
    }

    /// <summary>The oracle over an engine-side <see cref="ModelWeights"/> (weights dequantized to double once).</summary>
    public static ReferenceTransformer FromModelWeights(ModelWeights weights) =>
        new(weights.Config, ReferenceWeights.FromModelWeights(weights));

    /// <summary>
    /// Called, when set, with (layer, query position, query head, softmax weights over positions 0..position) for every
    /// attention row of <see cref="Forward"/> (from several threads at once; each call's array is its own).
    /// Lets tests check attention statistics against the oracle's probabilities.
    /// </summary>
    public Action<int, int, int, double[]>? AttentionWeights { get; init; }

    /// <summary>
    /// Called, when set, once per layer of <see cref="Forward"/> with (layer, the residual hidden states entering it
    /// [position][hidden], the values [position][kvHeads × headDim]). Lets tests weigh attention by them (KVzip+).
    /// </summary>
    public Action<int, double[][], double[][]>? AttentionInputs { get; init; }

    /// <summary>
    /// Cross-layer KV sharing (KVSharer): layer → earlier layer whose keys and values (after RoPE) its attention reads
    /// instead of its own. Null (the default): every layer attends over its own.
    /// </summary>
    public IReadOnlyDictionary<int, int>? KvSourceLayers { get; init; }

    /// <summary>The configuration this oracle runs.</summary>
    public ModelConfig Config => _c;

    /// <summary>
    /// Logits [position][vocab] of every position of <paramref name="tokens"/>, position p attending to 0..p,
    /// with RoPE position p = the index in the sequence.
    /// </summary>
    public double[][] Forward(int[] tokens)
    {
        var normed = FinalHidden(tokens);
        var embedding = Require(TensorNames.TokenEmbedding, (long)_c.VocabSize * _c.HiddenSize);
        // Tied models store no output.weight: the output projection is the embedding matrix itself.
        var output = _w(TensorNames.Output) ?? embedding;
        CheckLength(TensorNames.Output, output, (long)_c.VocabSize * _c.HiddenSize);
        return MatMul(output, _c.VocabSize, _c.HiddenSize, normed);
    }

    /// <summary>
    /// Final hidden states [position][hidden] of every position of <paramref name="tokens"/>: the last layer's residual
    /// after the final RMSNorm, which <see cref="Forward"/> multiplies by the LM head.
    /// </summary>
    public double[][] FinalHidden(int[] tokens)
    {
        int n = tokens.Length, d = _c.HiddenSize;
        var embedding = Require(TensorNames.TokenEmbedding, (long)_c.VocabSize * d);
        var x = new double[n][];
        for (int t = 0; t < n; t++)
        {
            if ((uint)tokens[t] >= (uint)_c.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token {tokens[t]} at {t} is outside the vocabulary of {_c.VocabSize}");
            x[t] = embedding.AsSpan(tokens[t] * d, d).ToArray();
        }

        var kvByLayer = new (double[][] K, double[][] V)[_c.NumLayers];
        for (int layer = 0; layer < _c.NumLayers; layer++)
        {
            var attn = Attention(layer, x, kvByLayer);
            for (int t = 0; t < n; t++) AddInPlace(x[t], attn[t]);
            var ffn = FeedForward(layer, x);
            for (int t = 0; t < n; t++) AddInPlace(x[t], ffn[t]);
        }

        var finalNorm = Require(TensorNames.OutputNorm, d);
        return x.Select(row => RmsNorm(row, finalNorm, _c.RmsNormEps)).ToArray();
    }

    /// <summary>
    /// RoPE inverse frequencies f_i = theta^(-2i/d), i &lt; d/2, with the Llama-3 rule when configured:
    /// wavelength 2 pi / f above original/low_freq_factor gets f/factor, below original/high_freq_factor keeps f,
    /// and in between f is interpolated with smooth = (original/wavelength - low) / (high - low).
    /// </summary>
    public static double[] InverseFrequencies(ModelConfig config)
    {
        int half = config.HeadDim / 2;
        var f = new double[half];
        for (int i = 0; i < half; i++)
        {
            double freq = Math.Pow(config.RopeTheta, -2.0 * i / config.HeadDim);
            if (config.RopeScaling is { } s)
            {
                double wavelen = 2 * Math.PI / freq;
                double lowFreqWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
                double highFreqWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
                if (wavelen > lowFreqWavelen)
                    freq /= s.Factor;
                else if (wavelen >= highFreqWavelen)
                {
                    double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    freq = (1 - smooth) * freq / s.Factor + smooth * freq;
                }
                // else: high frequency, unchanged.
            }
            f[i] = freq;
        }
        return f;
    }

    /// <summary>
    /// Rotates one head <paramref name="head"/> (length 2 * invFreq.Length) in place to <paramref name="position"/>:
    /// pair (a, b) becomes (a cos - b sin, a sin + b cos) at angle position * invFreq[i], where pair i is
    /// (2i, 2i+1) for <see cref="RopeStyle.Interleaved"/> and (i, i + d/2) for <see cref="RopeStyle.HalfSplit"/>.
    /// </summary>
    public static void ApplyRope(Span<double> head, int position, double[] invFreq, RopeStyle style)
    {
        int half = invFreq.Length;
        for (int i = 0; i < half; i++)
        {
            double angle = position * invFreq[i];
            double cos = Math.Cos(angle), sin = Math.Sin(angle);
            int ia = style == RopeStyle.Interleaved ? 2 * i : i;
            int ib = style == RopeStyle.Interleaved ? 2 * i + 1 : i + half;
            double a = head[ia], b = head[ib];
            head[ia] = a * cos - b * sin;
            head[ib] = a * sin + b * cos;
        }
    }

    /// <summary>RMSNorm: x / sqrt(mean(x^2) + eps) * weight.</summary>
    public static double[] RmsNorm(ReadOnlySpan<double> x, ReadOnlySpan<double> weight, double eps)
    {
        double ss = 0;
        foreach (var v in x) ss += v * v;
        double scale = 1.0 / Math.Sqrt(ss / x.Length + eps);
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++) y[i] = x[i] * scale * weight[i];
        return y;
    }

    /// <summary>SiLU (swish): x * sigmoid(x).</summary>
    public static double Silu(double x) => x / (1 + Math.Exp(-x));

    private double[][] Attention(int layer, double[][] x, (double[][] K, double[][] V)[] kvByLayer)
    {
        int n = x.Length, d = _c.HiddenSize, hd = _c.HeadDim;
        int qDim = _c.NumHeads * hd, kvDim = _c.NumKvHeads * hd;
        var normW = Require(TensorNames.Layer(layer, TensorNames.Suffix.AttnNorm), d);
        var h = x.Select(row => RmsNorm(row, normW, _c.RmsNormEps)).ToArray();

        var q = Project(layer, TensorNames.Suffix.Q, TensorNames.Suffix.QBias, qDim, d, h);
        var k = Project(layer, TensorNames.Suffix.K, TensorNames.Suffix.KBias, kvDim, d, h);
        var v = Project(layer, TensorNames.Suffix.V, TensorNames.Suffix.VBias, kvDim, d, h);
        AttentionInputs?.Invoke(layer, x, v);

        // Qwen3: each head of q and k is RMS-normalized on its own, before the rotation.
        if (_c.QkNorm)
        {
            var qn = Require(TensorNames.Layer(layer, TensorNames.Suffix.QNorm), hd);
            var kn = Require(TensorNames.Layer(layer, TensorNames.Suffix.KNorm), hd);
            for (int t = 0; t < n; t++)
            {
                NormHeads(q[t], qn);
                NormHeads(k[t], kn);
            }
        }

        for (int t = 0; t < n; t++)
        {
            for (int head = 0; head < _c.NumHeads; head++) ApplyRope(q[t].AsSpan(head * hd, hd), t, _invFreq, _c.RopeStyle);
            for (int head = 0; head < _c.NumKvHeads; head++) ApplyRope(k[t].AsSpan(head * hd, hd), t, _invFreq, _c.RopeStyle);
        }

        kvByLayer[layer] = (k, v);
        if (KvSourceLayers?.TryGetValue(layer, out int source) == true) (k, v) = kvByLayer[source];

        int group = _c.NumHeads / _c.NumKvHeads;
        double scale = 1.0 / Math.Sqrt(hd);
        var ctx = new double[n][];
        for (int t = 0; t < n; t++) ctx[t] = new double[qDim];
        Parallel.For(0, n * _c.NumHeads, job =>
        {
            int t = job / _c.NumHeads, head = job % _c.NumHeads;
            int kvHead = head / group; // GQA: consecutive query heads share a KV head
            var qh = q[t].AsSpan(head * hd, hd);
            var scores = new double[t + 1];
            double max = double.NegativeInfinity;
            for (int s = 0; s <= t; s++)
            {
                scores[s] = Dot(qh, k[s].AsSpan(kvHead * hd, hd)) * scale;
                max = Math.Max(max, scores[s]);
            }
            double sum = 0;
            for (int s = 0; s <= t; s++) { scores[s] = Math.Exp(scores[s] - max); sum += scores[s]; }
            AttentionWeights?.Invoke(layer, t, head, scores.Select(e => e / sum).ToArray());
            var outHead = ctx[t].AsSpan(head * hd, hd);
            for (int s = 0; s <= t; s++)
            {
                double p = scores[s] / sum;
                var vh = v[s].AsSpan(kvHead * hd, hd);
                for (int i = 0; i < hd; i++) outHead[i] += p * vh[i];
            }
        });

        var wo = Require(TensorNames.Layer(layer, TensorNames.Suffix.AttnOutput), (long)d * qDim);
        return MatMul(wo, d, qDim, ctx);
    }

    private double[][] FeedForward(int layer, double[][] x)
    {
        int d = _c.HiddenSize, f = _c.IntermediateSize;
        var normW = Require(TensorNames.Layer(layer, TensorNames.Suffix.FfnNorm), d);
        var h = x.Select(row => RmsNorm(row, normW, _c.RmsNormEps)).ToArray();
        var gate = MatMul(Require(TensorNames.Layer(layer, TensorNames.Suffix.FfnGate), (long)f * d), f, d, h);
        var up = MatMul(Require(TensorNames.Layer(layer, TensorNames.Suffix.FfnUp), (long)f * d), f, d, h);
        for (int t = 0; t < x.Length; t++)
            for (int i = 0; i < f; i++) gate[t][i] = Silu(gate[t][i]) * up[t][i];
        return MatMul(Require(TensorNames.Layer(layer, TensorNames.Suffix.FfnDown), (long)d * f), d, f, gate);
    }

    /// <summary>W x (+ b when the model has attention biases and the tensor exists).</summary>
    private double[][] Project(int layer, string weight, string bias, int rows, int cols, double[][] x)
    {
        var y = MatMul(Require(TensorNames.Layer(layer, weight), (long)rows * cols), rows, cols, x);
        if (_c.AttentionBias && _w(TensorNames.Layer(layer, bias)) is { } b)
        {
            CheckLength(TensorNames.Layer(layer, bias), b, rows);
            foreach (var row in y) AddInPlace(row, b);
        }
        return y;
    }

    private void NormHeads(double[] x, double[] weight)
    {
        int hd = _c.HeadDim;
        for (int off = 0; off < x.Length; off += hd)
            RmsNorm(x.AsSpan(off, hd), weight, _c.RmsNormEps).CopyTo(x.AsSpan(off, hd));
    }

    /// <summary>y[t] = W x[t] for W row-major [rows, cols].</summary>
    private static double[][] MatMul(double[] w, int rows, int cols, double[][] x)
    {
        var y = new double[x.Length][];
        for (int t = 0; t < x.Length; t++) y[t] = new double[rows];
        Parallel.For(0, rows, r =>
        {
            var wr = w.AsSpan(r * cols, cols);
            for (int t = 0; t < x.Length; t++) y[t][r] = Dot(wr, x[t]);
        });
        return y;
    }

    /// <summary>
    /// Float64 dot product. System.Numerics.Tensors' (an optimized, independently tested library) only for speed:
    /// the test project builds in Debug, where a hand-written SIMD loop runs unoptimized.
    /// </summary>
    private static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b) => TensorPrimitives.Dot(a, b);

    private static void AddInPlace(double[] x, double[] y)
    {
        for (int i = 0; i < x.Length; i++) x[i] += y[i];
    }

    private double[] Require(string name, long length)
    {
        var w = _w(name) ?? throw new InvalidOperationException($"reference model: missing tensor '{name}'");
        CheckLength(name, w, length);
        return w;
    }

    private static void CheckLength(string name, double[] w, long length)
    {
        if (w.Length != length)
            throw new InvalidOperationException($"reference model: tensor '{name}' has {w.Length} values, expected {length}");
    }
}
