using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Evaluation.Metrics;
using KvSharp.Models;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// Measures how much quantizing a layer's KV cache changes a model's predictions on calibration text, for KVTuner's
/// search. The text's first <see cref="ContextTokens"/> tokens are prefilled into a float32 cache (the full-precision
/// reference); a quantized variant re-quantizes the context's KV (layer by layer as asked), then the remaining tokens
/// are run teacher-forced on top of it and the loss is the mean KL(P_full ‖ P_quantized) of their next-token distributions.
/// </summary>
public sealed class KvTunerProfiler : IDisposable
{
    private readonly Transformer _model;
    private readonly int[] _continuation;
    private readonly PagedKvCache _context;
    private readonly float[] _reference; // logits [continuation × vocab] with the full-precision cache

    /// <summary>Prefills the context and computes the full-precision reference.</summary>
    /// <param name="model">The model.</param>
    /// <param name="tokens">Calibration tokens.</param>
    /// <param name="contextTokens">Tokens prefilled (and quantized); the rest are scored. Must leave ≥ 1 token to score.</param>
    /// <exception cref="KvSharpException">Too few tokens.</exception>
    public KvTunerProfiler(Transformer model, IReadOnlyList<int> tokens, int contextTokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokens);
        if (contextTokens < 1 || contextTokens >= tokens.Count)
            throw new KvSharpException($"KVTuner calibration: {tokens.Count} tokens cannot give a context of {contextTokens} and ≥ 1 scored token (give a longer text)");
        _model = model;
        ContextTokens = contextTokens;
        _continuation = tokens.Skip(contextTokens).ToArray();
        _context = new PagedKvCache(model.Config, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = tokens.Count });
        model.Forward(tokens.Take(contextTokens).ToArray(), _context);
        _reference = Run(null);
    }

    /// <summary>Prefilled (quantized) tokens.</summary>
    public int ContextTokens { get; }

    /// <summary>Scored tokens.</summary>
    public int ScoredTokens => _continuation.Length;

    /// <summary>Layers of the model.</summary>
    public int Layers => _model.Config.NumLayers;

    /// <summary>Mean KL of the scored tokens' next-token distributions with the context's layers quantized as <paramref name="pairs"/> (null = left in float32).</summary>
    public double Loss(IReadOnlyList<KvTunerPair?> pairs)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        if (pairs.Count != Layers) throw new ArgumentException($"{pairs.Count} pairs for {Layers} layers", nameof(pairs));
        var logits = Run(pairs);
        int vocab = _model.Config.VocabSize;
        double kl = 0;
        for (int t = 0; t < _continuation.Length; t++)
            kl += LanguageModelMetrics.KlDivergence(_reference.AsSpan(t * vocab, vocab), logits.AsSpan(t * vocab, vocab));
        return kl / _continuation.Length;
    }

    /// <summary>
    /// The sensitivity table of the search: [layer][candidate] = <see cref="Loss"/> with only that layer at that pair.
    /// <paramref name="progress"/> gets the fraction done.
    /// </summary>
    public double[][] Sensitivity(IProgress<double>? progress = null)
    {
        var pairs = KvTunerPair.Candidates;
        var table = new double[Layers][];
        for (int l = 0; l < Layers; l++)
        {
            table[l] = new double[pairs.Count];
            for (int p = 0; p < pairs.Count; p++)
            {
                var config = new KvTunerPair?[Layers];
                config[l] = pairs[p];
                table[l][p] = Loss(config);
                progress?.Report((l * pairs.Count + p + 1.0) / (Layers * pairs.Count));
            }
        }
        return table;
    }

    private float[] Run(IReadOnlyList<KvTunerPair?>? pairs)
    {
        using var fork = _context.Fork();
        if (pairs != null)
            for (int l = 0; l < Layers; l++)
            {
                if (pairs[l] is not { } pair) continue;
                for (int h = 0; h < fork.KvHeads; h++)
                {
                    var all = new bool[fork.Positions(l, h).Count];
                    Array.Fill(all, true);
                    fork.Requantize(l, h, all, pair.Formats.Keys, pair.Formats.Values);
                }
            }
        return _model.Forward(_continuation, fork, LogitsMode.All);
    }

    /// <inheritdoc />
    public void Dispose() => _context.Dispose();
}
