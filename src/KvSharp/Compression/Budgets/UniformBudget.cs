namespace KvSharp.Compression.Budgets;

/// <summary>Every head keeps the same share of its candidates (KVzip's "pair-uniform" level: top-k per head).</summary>
public sealed class UniformBudget(KeepTarget target) : IBudget
{
    /// <summary>How much is kept.</summary>
    public KeepTarget Target { get; } = target;

    /// <inheritdoc />
    public string Text => $"uniform:{Target}";

    /// <inheritdoc />
    public int[] Allocate(HeadScores candidates)
    {
        var counts = new int[candidates.HeadCount];
        for (int i = 0; i < counts.Length; i++) counts[i] = Target.ForHead(candidates[i].Length, candidates.HeadCount);
        return counts;
    }
}
