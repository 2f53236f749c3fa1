using KvSharp.Cache;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// The queries window-based scorers (SnapKV, TOVA, DBudgetKV) observe: the last <c>w</c> context tokens, run again at
/// their own positions (query-agnostic; those tokens are then forced kept), or the question (query-aware).
/// </summary>
internal static class ObservationWindow
{
    /// <summary>
    /// Attention statistics of the window's queries over the stored tokens before it, and per head the aligned
    /// values of <paramref name="pick"/> with +∞ for the window's own (uncovered) tokens.
    /// </summary>
    public static HeadScores Observe(PressContext context, int window, GroupFold fold, Func<AttentionStatistics, int, int, float[]> pick, bool lastQueryOnly = false)
    {
        int length = context.Tokens.Count;
        AttentionStatistics stats;
        if (context.Question is { Count: > 0 } question)
        {
            var q = question.ToArray();
            stats = context.Observe(q, fold, firstQueryPosition: lastQueryOnly ? length + q.Length - 1 : null);
        }
        else
        {
            int start = Math.Max(0, length - window);
            if (start == 0) return Forced(context); // the whole context is the window
            stats = context.Observe(context.Tokens.Skip(start).ToArray(), fold, rewindTo: start,
                firstQueryPosition: lastQueryOnly ? length - 1 : null);
        }
        var scores = context.NewScores();
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
                scores[l, h] = context.Align(stats, l, h, pick(stats, l, h), float.PositiveInfinity);
        return scores;
    }

    private static HeadScores Forced(PressContext context)
    {
        var scores = context.NewScores();
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
            {
                var s = new float[context.Cache.Positions(l, h).Count];
                Array.Fill(s, float.PositiveInfinity);
                scores[l, h] = s;
            }
        return scores;
    }
}
