using System.Globalization;
using KvSharp.Cache;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// H2O (heavy hitters): the attention each token receives summed over every later query of the prefill (and the
/// question's queries when query-aware), averaged over the GQA group; the most recent <see cref="Window"/> tokens are
/// kept (+∞). The prefill is re-run in chunks of <see cref="Chunk"/> tokens at their own positions, each chunk's queries
/// observed over the tokens before it, so contributions of queries to tokens of their own chunk are not counted
/// (chunk = 1 is exact but runs one token at a time).
/// </summary>
public sealed class H2oScorer : IScorer
{
    /// <summary>Creates the scorer.</summary>
    /// <exception cref="KvSharpException">A parameter is out of range.</exception>
    public H2oScorer(int window = 32, int chunk = 64)
    {
        if (window < 0) throw new KvSharpException($"h2o: window must be ≥ 0, got {window}");
        if (chunk < 1) throw new KvSharpException($"h2o: chunk must be ≥ 1, got {chunk}");
        Window = window; Chunk = chunk;
    }

    /// <summary>Most recent tokens always kept.</summary>
    public int Window { get; }

    /// <summary>Query tokens per observation run.</summary>
    public int Chunk { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"h2o:window={Window},chunk={Chunk}");

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        int length = context.Tokens.Count;
        var scores = context.NewScores();
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
                scores[l, h] = new float[context.Cache.Positions(l, h).Count];
        var tokens = context.Tokens.ToArray();
        for (int start = Chunk; start < length; start += Chunk)
            Add(context, scores, context.Observe(tokens.AsSpan(start, Math.Min(Chunk, length - start)), GroupFold.Mean, rewindTo: start));
        if (context.Question is { Count: > 0 } q) Add(context, scores, context.Observe(q.ToArray(), GroupFold.Mean));
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
            {
                var positions = context.Cache.Positions(l, h);
                var s = scores[l, h];
                for (int i = 0; i < s.Length; i++) if (positions[i] >= length - Window) s[i] = float.PositiveInfinity;
            }
        return scores;
    }

    private static void Add(PressContext context, HeadScores scores, AttentionStatistics stats)
    {
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
            {
                var add = context.Align(stats, l, h, stats.SumProbability(l, h), 0);
                var s = scores[l, h];
                for (int i = 0; i < s.Length; i++) s[i] += add[i];
            }
    }
}
