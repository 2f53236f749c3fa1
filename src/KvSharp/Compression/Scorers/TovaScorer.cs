using KvSharp.Cache;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// TOVA: the attention the last query gives each token, averaged over the GQA group's heads. Query-agnostic, the last
/// context token is run again as that query (and kept); query-aware, the question's last token is.
/// </summary>
public sealed class TovaScorer : IScorer
{
    /// <inheritdoc />
    public string Text => "tova";

    /// <inheritdoc />
    public HeadScores Score(PressContext context) =>
        ObservationWindow.Observe(context, 1, GroupFold.Mean, (s, l, h) => s.SumProbability(l, h).ToArray(), lastQueryOnly: true);
}
