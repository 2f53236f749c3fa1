using System.Globalization;
using KvSharp.Cache;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// KV-Compress (paged, variable per head): whole blocks are ranked across all layers and heads (use it with the
/// global budget, its default). A token's metric is Σ over the last <see cref="Window"/> context queries of the
/// squared attention it receives, the attention summed over the query group first (the statistics fold the group
/// before squaring, so this is (Σ_h p_h)², not Σ_h p_h²); each query is observed on its own run. A block — each run of
/// <see cref="Block"/> consecutive stored tokens of a head — scores the sum of its tokens' metrics and every token
/// carries its block's score, so the global threshold evicts whole blocks (only the boundary block may split).
/// The window is kept.
/// </summary>
public sealed class KvCompressScorer : IScorer
{
    /// <summary>Creates the scorer.</summary>
    /// <exception cref="KvSharpException">A parameter is out of range.</exception>
    public KvCompressScorer(int window = 32, int block = 32)
    {
        if (window < 1) throw new KvSharpException($"kvcompress: window must be ≥ 1, got {window}");
        if (block < 1) throw new KvSharpException($"kvcompress: block must be ≥ 1, got {block}");
        Window = window; Block = block;
    }

    /// <summary>Observed last context queries (kept).</summary>
    public int Window { get; }

    /// <summary>Tokens per ranked block (the cache's block size by default).</summary>
    public int Block { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"kvcompress:window={Window},block={Block}");

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        int length = context.Tokens.Count, start = Math.Max(0, length - Window);
        var tokens = context.Tokens.ToArray();
        var scores = context.NewScores();
        for (int i = 0; i < scores.HeadCount; i++) scores[i / context.KvHeads, i % context.KvHeads] = new float[context.Cache.Positions(i / context.KvHeads, i % context.KvHeads).Count];
        int group = context.Model.Config.NumHeads / context.KvHeads;
        for (int q = start; q < length && start > 0; q++)
        {
            // One query per run: its own probabilities, which the statistics' sum would otherwise mix with the others'.
            var stats = context.Observe(tokens.AsSpan(q, 1), GroupFold.Mean, rewindTo: q);
            for (int l = 0; l < context.Layers; l++)
                for (int h = 0; h < context.KvHeads; h++)
                    AddQuery(scores[l, h], context.Align(stats, l, h, stats.SumProbability(l, h), 0), group);
        }
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
                ScoreBlocks(scores[l, h], context.Cache.Positions(l, h), start);
        return scores;
    }

    /// <summary>
    /// Adds one window query's metric to a head's <paramref name="scores"/>: (the group's summed probability)² of each
    /// token, from <paramref name="meanProbability"/> (the group mean; 0 where the query did not see the token). Shared
    /// with the CUDA backend, which observes each query on the device.
    /// </summary>
    internal static void AddQuery(float[] scores, ReadOnlySpan<float> meanProbability, int group)
    {
        for (int i = 0; i < scores.Length; i++) { double summed = (i < meanProbability.Length ? meanProbability[i] : 0) * group; scores[i] += (float)(summed * summed); }
    }

    /// <summary>
    /// Turns a head's per-token metrics into block scores in place: each run of <see cref="Block"/> stored tokens scores its
    /// sum, tokens at or after <paramref name="windowStart"/> (the window) +∞.
    /// </summary>
    internal void ScoreBlocks(float[] scores, IReadOnlyList<int> positions, int windowStart)
    {
        for (int b = 0; b < scores.Length; b += Block)
        {
            int e = Math.Min(scores.Length, b + Block);
            float sum = 0;
            for (int i = b; i < e; i++) sum += scores[i];
            for (int i = b; i < e; i++) scores[i] = positions[i] >= windowStart ? float.PositiveInfinity : sum;
        }
    }
}
