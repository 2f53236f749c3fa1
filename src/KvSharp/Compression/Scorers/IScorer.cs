namespace KvSharp.Compression.Scorers;

/// <summary>Gives every stored token of every (layer, KV head) an importance score (the "scorer" of a press).</summary>
public interface IScorer
{
    /// <summary>Canonical text form, <c>name</c> or <c>name:param=value,...</c>.</summary>
    string Text { get; }

    /// <summary>Scores of every stored token, in <c>Cache.Positions</c> order (protected-prefix tokens included; their scores are ignored).</summary>
    HeadScores Score(PressContext context);
}
