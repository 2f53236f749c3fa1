namespace KvSharp.Compression.Budgets;

/// <summary>
/// Decides how many tokens each (layer, KV head) keeps (the "budget" of a press), given the scores of its candidate
/// tokens (the tokens after the protected prefix). Which tokens are kept is then the top of each head's scores.
/// </summary>
public interface IBudget
{
    /// <summary>Canonical text form, <c>name:param=value,...</c>.</summary>
    string Text { get; }

    /// <summary>
    /// Tokens to keep per head (index layer × KvHeads + kvHead), each between the head's count of +∞ scores and its
    /// candidate count (the caller clamps to that range: forced tokens are always kept).
    /// </summary>
    int[] Allocate(HeadScores candidates);
}
