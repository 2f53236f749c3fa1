using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Scorers;
using KvSharp.Generation.Chat;
using KvSharp.Models;
using KvSharp.Tokenization;

namespace KvSharp.Compression.Calibration;

/// <summary>
/// KVzip's head-level scores, computed once per model (<c>kvsharp calibrate kvzip-heads</c>): each calibration window
/// is prefilled into a float32 cache and scored by KVzip's context reconstruction (<see cref="KvzipScorer"/>, the
/// first <see cref="Sinks"/> positions protected); a head's score in a window is the maximum of its pair scores there,
/// and its profile score the mean of those maxima over the windows. The sink positions are left out of the maximum:
/// every head attends its sink strongly, and the head-level press keeps the sinks of every head anyway.
/// </summary>
public sealed class KvzipHeadCalibration
{
    /// <summary>The method name written in the profile file.</summary>
    public const string Method = "kvzip-heads";

    /// <summary>Creates the calibration.</summary>
    /// <exception cref="KvSharpException">Negative sinks or a chunk below 1.</exception>
    public KvzipHeadCalibration(int sinks = 4, int chunk = 2000)
    {
        if (sinks < 0) throw new KvSharpException($"kvzip-heads calibration: sinks must be ≥ 0, got {sinks}");
        if (chunk < 1) throw new KvSharpException($"kvzip-heads calibration: chunk must be ≥ 1, got {chunk}");
        Sinks = sinks;
        Chunk = chunk;
    }

    /// <summary>Leading positions protected and left out of the head maximum (attention sinks).</summary>
    public int Sinks { get; }

    /// <summary>Context tokens per repeat run (KVzip's chunk).</summary>
    public int Chunk { get; }

    /// <summary>
    /// Scores every (layer, KV head) over <paramref name="windows"/> (each longer than <see cref="Sinks"/>);
    /// <paramref name="progress"/> gets the fraction of windows done.
    /// </summary>
    /// <exception cref="KvSharpException">No window, or a window too short or too long for the model's context with its repeat run.</exception>
    public HeadProfile Run(Transformer model, ITokenizer tokenizer, IChatTemplate? template, IReadOnlyList<int[]> windows, IProgress<double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(windows);
        if (windows.Count == 0) throw new KvSharpException("kvzip-heads calibration: no calibration window");
        var c = model.Config;
        var sums = new double[c.NumLayers][];
        for (int l = 0; l < sums.Length; l++) sums[l] = new double[c.NumKvHeads];
        var scorer = new KvzipScorer(Chunk);
        for (int w = 0; w < windows.Count; w++)
        {
            var tokens = windows[w];
            if (tokens.Length <= Sinks) throw new KvSharpException($"kvzip-heads calibration: window {w} has {tokens.Length} tokens, more than the {Sinks} sinks needed");
            using var cache = new PagedKvCache(c, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = c.MaxContext });
            model.Forward(tokens, cache);
            var scores = scorer.Score(new PressContext(model, cache, tokens) { Tokenizer = tokenizer, ChatTemplate = template, ProtectedPrefix = Sinks });
            for (int l = 0; l < c.NumLayers; l++)
                for (int h = 0; h < c.NumKvHeads; h++)
                {
                    var positions = cache.Positions(l, h);
                    var s = scores[l, h];
                    double max = 0;
                    for (int i = 0; i < s.Length; i++) if (positions[i] >= Sinks) max = Math.Max(max, s[i]);
                    sums[l][h] += max;
                }
            progress?.Report((w + 1.0) / windows.Count);
        }
        return new HeadProfile(Method, sums.Select(r => (IReadOnlyList<double>)r.Select(x => x / windows.Count).ToArray()).ToArray());
    }
}
