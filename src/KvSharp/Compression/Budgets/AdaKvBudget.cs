namespace KvSharp.Compression.Budgets;

/// <summary>
/// AdaKV (head-adaptive): each layer keeps as many tokens as the uniform budget would, but chosen as the top scores
/// of all its heads together, so heads with concentrated attention give budget to heads with spread attention.
/// Each head first gets a floor of ⌊<see cref="Floor"/> × its uniform share⌋ of its own best tokens.
/// </summary>
public sealed class AdaKvBudget(KeepTarget target, double floor = 0.2) : IBudget
{
    /// <summary>How much each layer keeps in all.</summary>
    public KeepTarget Target { get; } = target;

    /// <summary>Fraction of its uniform share a head keeps whatever its scores.</summary>
    public double Floor { get; } = floor is >= 0 and <= 1 ? floor : throw new KvSharpException($"adakv: floor must be in [0, 1], got {floor}");

    /// <inheritdoc />
    public string Text => $"adakv:{Target},floor={Floor.ToString("R", System.Globalization.CultureInfo.InvariantCulture)}";

    /// <inheritdoc />
    public int[] Allocate(HeadScores candidates)
    {
        var counts = new int[candidates.HeadCount];
        for (int l = 0; l < candidates.Layers; l++)
        {
            var layerHeads = Enumerable.Range(l * candidates.KvHeads, candidates.KvHeads).ToArray();
            long budget = 0;
            foreach (int h in layerHeads)
            {
                int share = Target.ForHead(candidates[h].Length, candidates.HeadCount);
                budget += share;
                counts[h] = (int)Math.Floor(Floor * share);
                budget -= counts[h];
            }
            TopK.CountsPerHead(candidates, layerHeads, budget, counts);
        }
        return counts;
    }
}
