namespace KvSharp.Compression.Budgets;

/// <summary>
/// PyramidKV: per-layer budgets decreasing linearly with depth. With C the uniform per-head budget, w the head's
/// forced tokens (the scorer's observation window, score +∞) and L layers: min = (C−w)/β, max = 2(C−w) − min,
/// budget_l = max − l·(max − min)/(L − 1) + w (layer 0 keeps most). Falls back to the uniform C when the head holds
/// fewer than 2(C−w) candidates (the pyramid would ask for more than there is), as the reference implementation does.
/// Every head of a layer gets the same budget; the total over layers equals the uniform total (up to rounding).
/// </summary>
public sealed class PyramidBudget(KeepTarget target, double beta = 20) : IBudget
{
    /// <summary>How much is kept on average.</summary>
    public KeepTarget Target { get; } = target;

    /// <summary>Ratio of the largest to the smallest layer budget's non-window part is 2β − 1.</summary>
    public double Beta { get; } = beta > 0 ? beta : throw new KvSharpException($"pyramid: beta must be > 0, got {beta}");

    /// <inheritdoc />
    public string Text => $"pyramid:{Target},beta={Beta.ToString("R", System.Globalization.CultureInfo.InvariantCulture)}";

    /// <inheritdoc />
    public int[] Allocate(HeadScores candidates)
    {
        int layers = candidates.Layers, heads = candidates.HeadCount;
        var counts = new int[heads];
        for (int i = 0; i < heads; i++)
        {
            var s = candidates[i];
            int layer = i / candidates.KvHeads, n = s.Length, w = TopK.Forced(s);
            int c = Target.ForHead(n, heads);
            counts[i] = Math.Clamp((int)Math.Round(LayerBudget(c, w, n, layer, layers), MidpointRounding.AwayFromZero), 0, n);
        }
        return counts;
    }

    /// <summary>The formula: tokens layer <paramref name="layer"/> of <paramref name="layers"/> keeps in a head of <paramref name="n"/> candidates.</summary>
    public double LayerBudget(int c, int w, int n, int layer, int layers)
    {
        double free = c - w;
        if (layers == 1 || free <= 0 || n < 2 * free) return c;
        double min = free / Beta, max = 2 * free - min;
        return max - layer * (max - min) / (layers - 1) + w;
    }
}
