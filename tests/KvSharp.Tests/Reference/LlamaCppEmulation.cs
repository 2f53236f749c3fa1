using KvSharp.Models;

namespace KvSharp.Tests.Reference;

/// <summary>
/// A Llama GGUF model (f32 weights) run the way llama.cpp's CPU backend runs it with its defaults: an F16 KV cache, flash
/// attention, one ubatch per decode call, logits of the last row only. Each step uses <see cref="GgmlCpu"/>'s arithmetic, so
/// the logits are llama.cpp's bit for bit (stories260K: every recorded logit and all 200 greedy tokens of the four prompts).
/// Independent of the engine: only the test loaders' weights are shared.
/// </summary>
public sealed class LlamaCppEmulation
{
    /// <summary>llama.cpp pads the KV view to 256 cells; past that a decode attends over 512 cells and takes the split-KV path.</summary>
    public const int MaxTokens = 256;

    /// <summary>
    /// Query rows per call: llama.cpp's flash attention stays on the one-chunk path reproduced here below 64 rows (its tiled
    /// path); checked against llama.cpp with batches of up to 20.
    /// </summary>
    public const int MaxBatch = 32;

    private readonly ModelConfig _c;
    private readonly Func<string, float[]> _w;

    /// <summary>The emulation over <paramref name="weights"/> (canonical tensor names, row-major [out, in]).</summary>
    public LlamaCppEmulation(ModelConfig config, Func<string, double[]?> weights)
    {
        if (config.AttentionBias || config.QkNorm || config.RopeScaling is not null || config.RopeStyle != RopeStyle.Interleaved)
            throw new NotSupportedException("the llama.cpp emulation covers plain Llama GGUF models (interleaved RoPE, no biases, no q/k norm, no RoPE scaling)");
        _c = config;
        var cache = new Dictionary<string, float[]?>(StringComparer.Ordinal);
        _w = name =>
        {
            if (!cache.TryGetValue(name, out var w)) cache[name] = w = weights(name)?.Select(v => (float)v).ToArray();
            return w ?? throw new InvalidOperationException($"llama.cpp emulation: missing tensor '{name}'");
        };
        // Tied models use the embedding as the output matrix.
        if (weights(TensorNames.Output) is null) cache[TensorNames.Output] = _w(TensorNames.TokenEmbedding);
    }

    /// <summary>A fresh context (empty KV cache).</summary>
    public Context NewContext() => new(this);

    /// <summary>One llama.cpp context: its F16 KV cache and <see cref="Decode"/> calls.</summary>
    public sealed class Context
    {
        private readonly LlamaCppEmulation _m;
        private readonly List<float>[] _keys, _values; // [layer * kvHeads + kvHead]: [tokens, headDim]

        internal Context(LlamaCppEmulation model)
        {
            _m = model;
            int n = model._c.NumLayers * model._c.NumKvHeads;
            _keys = Enumerable.Range(0, n).Select(_ => new List<float>()).ToArray();
            _values = Enumerable.Range(0, n).Select(_ => new List<float>()).ToArray();
        }

        /// <summary>Tokens in the cache (the next token's position).</summary>
        public int Length { get; private set; }

        /// <summary>llama_decode of one batch at positions Length.. (one ubatch); returns the last token's logits.</summary>
        public float[] Decode(ReadOnlySpan<int> tokens)
        {
            var c = _m._c;
            int n = tokens.Length, rows = n;
            if (n == 0 || n > MaxBatch) throw new ArgumentOutOfRangeException(nameof(tokens), $"batches of 1..{MaxBatch} tokens, not {n}");
            if (Length + n > MaxTokens) throw new ArgumentOutOfRangeException(nameof(tokens), $"the emulation covers {MaxTokens} tokens of context");
            int d = c.HiddenSize, hd = c.HeadDim, f = c.IntermediateSize, kvHeads = c.NumKvHeads;
            int qDim = c.NumHeads * hd, kvDim = kvHeads * hd, group = c.NumHeads / kvHeads;
            float eps = c.RmsNormEps, ropeBase = (float)c.RopeTheta, scale = 1.0f / MathF.Sqrt(hd);

            var x = new float[n * d];
            var embedding = _m._w(TensorNames.TokenEmbedding);
            for (int t = 0; t < n; t++) embedding.AsSpan(tokens[t] * d, d).CopyTo(x.AsSpan(t * d));
            float[] h = new float[n * d], q = new float[n * qDim], k = new float[n * kvDim], v = new float[n * kvDim];
            float[] attn = new float[n * qDim], proj = new float[n * d];
            float[] gate = new float[n * f], up = new float[n * f], act = new float[n * f];

            for (int layer = 0; layer < c.NumLayers; layer++)
            {
                float[] W(string suffix) => _m._w(TensorNames.Layer(layer, suffix));
                for (int t = 0; t < rows; t++) GgmlCpu.RmsNorm(x.AsSpan(t * d, d), W(TensorNames.Suffix.AttnNorm), eps, h.AsSpan(t * d, d));
                GgmlCpu.MatMul(W(TensorNames.Suffix.Q), qDim, d, h, rows, q);
                GgmlCpu.MatMul(W(TensorNames.Suffix.K), kvDim, d, h, rows, k);
                GgmlCpu.MatMul(W(TensorNames.Suffix.V), kvDim, d, h, rows, v);
                for (int t = 0; t < rows; t++)
                {
                    for (int head = 0; head < c.NumHeads; head++) GgmlCpu.Rope(q.AsSpan(t * qDim + head * hd, hd), Length + t, ropeBase);
                    for (int head = 0; head < kvHeads; head++) GgmlCpu.Rope(k.AsSpan(t * kvDim + head * hd, hd), Length + t, ropeBase);
                    for (int g = 0; g < kvHeads; g++)
                    {
                        GgmlCpu.AppendHalf(_keys[layer * kvHeads + g], k.AsSpan(t * kvDim + g * hd, hd));
                        GgmlCpu.AppendHalf(_values[layer * kvHeads + g], v.AsSpan(t * kvDim + g * hd, hd));
                    }
                }
                for (int t = 0; t < rows; t++)
                    for (int head = 0; head < c.NumHeads; head++)
                    {
                        int cell = layer * kvHeads + head / group;
                        GgmlCpu.FlashAttentionF16(q.AsSpan(t * qDim + head * hd, hd), GgmlCpu.AsSpan(_keys[cell]), GgmlCpu.AsSpan(_values[cell]),
                            Length + t + 1, scale, attn.AsSpan(t * qDim + head * hd, hd));
                    }
                GgmlCpu.MatMul(W(TensorNames.Suffix.AttnOutput), d, qDim, attn, rows, proj);
                if (layer == c.NumLayers - 1 && rows > 1)
                {
                    // The last layer keeps only the rows that give logits (llama.cpp's inp_out_ids) after the attention
                    // output: the rest of it runs as a batch of one, which changes the matrix kernel.
                    x.AsSpan((rows - 1) * d, d).CopyTo(x);
                    proj.AsSpan((rows - 1) * d, d).CopyTo(proj);
                    rows = 1;
                }
                for (int i = 0; i < rows * d; i++) x[i] += proj[i];
                for (int t = 0; t < rows; t++) GgmlCpu.RmsNorm(x.AsSpan(t * d, d), W(TensorNames.Suffix.FfnNorm), eps, h.AsSpan(t * d, d));
                GgmlCpu.MatMul(W(TensorNames.Suffix.FfnGate), f, d, h, rows, gate);
                GgmlCpu.MatMul(W(TensorNames.Suffix.FfnUp), f, d, h, rows, up);
                for (int t = 0; t < rows; t++) GgmlCpu.Swiglu(gate.AsSpan(t * f, f), up.AsSpan(t * f, f), act.AsSpan(t * f, f));
                GgmlCpu.MatMul(W(TensorNames.Suffix.FfnDown), d, f, act, rows, proj);
                for (int i = 0; i < rows * d; i++) x[i] += proj[i];
            }
            Length += n;

            var last = new float[d];
            GgmlCpu.RmsNorm(x.AsSpan((rows - 1) * d, d), _m._w(TensorNames.OutputNorm), eps, last);
            var logits = new float[c.VocabSize];
            GgmlCpu.MatMul(_m._w(TensorNames.Output), c.VocabSize, d, last, 1, logits);
            return logits;
        }
    }
}
