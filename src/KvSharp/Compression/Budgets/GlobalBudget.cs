namespace KvSharp.Compression.Budgets;

/// <summary>
/// One threshold over all layers × heads × tokens (KVzip's "pair" level): the top K scores of the whole cache are
/// kept, so each head's budget follows its scores. Scores must be comparable across heads (attention probabilities are).
/// </summary>
public sealed class GlobalBudget(KeepTarget target) : IBudget
{
    /// <summary>How much is kept.</summary>
    public KeepTarget Target { get; } = target;

    /// <inheritdoc />
    public string Text => $"global:{Target}";

    /// <inheritdoc />
    public int[] Allocate(HeadScores candidates)
    {
        long total = 0;
        for (int i = 0; i < candidates.HeadCount; i++) total += candidates[i].Length;
        long keep = Target.ForAll(total, candidates.HeadCount);
        return TopK.CountsPerHead(candidates, Enumerable.Range(0, candidates.HeadCount), keep, new int[candidates.HeadCount]);
    }
}
