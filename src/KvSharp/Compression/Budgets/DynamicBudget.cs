using System.Globalization;

namespace KvSharp.Compression.Budgets;

/// <summary>
/// Dynamic budget (DBudgetKV's stopping rule, ZipVL's adaptive ratio): no fixed ratio. Each head's finite scores are
/// read as attention masses; tokens are pruned from the least important up while the pruned mass stays within
/// <see cref="Mass"/> of the head's total, i.e. the head keeps the smallest set of its best tokens holding at least
/// (1 − Mass) of its attention. Forced (+∞) tokens are kept and outside the mass.
/// </summary>
public sealed class DynamicBudget : IBudget
{
    /// <summary>Creates the budget.</summary>
    /// <exception cref="KvSharpException"><paramref name="mass"/> is outside [0, 1].</exception>
    public DynamicBudget(double mass = 0.01)
    {
        if (mass is < 0 or > 1 || double.IsNaN(mass)) throw new KvSharpException($"dynamic: mass must be in [0, 1], got {mass}");
        Mass = mass;
    }

    /// <summary>Fraction of a head's attention mass that may be pruned.</summary>
    public double Mass { get; }

    /// <inheritdoc />
    public string Text => "dynamic:mass=" + Mass.ToString("R", CultureInfo.InvariantCulture);

    /// <inheritdoc />
    public int[] Allocate(HeadScores candidates)
    {
        var counts = new int[candidates.HeadCount];
        for (int i = 0; i < counts.Length; i++)
        {
            var s = candidates[i];
            var order = TopK.Descending(s);
            int forced = TopK.Forced(s);
            double total = 0;
            for (int r = forced; r < order.Length; r++) total += Math.Max(0, s[order[r]]);
            // Prune from the bottom while the pruned mass stays within the allowance.
            double pruned = 0, allowed = Mass * total;
            int keep = order.Length;
            while (keep > forced && pruned + Math.Max(0, s[order[keep - 1]]) <= allowed)
                pruned += Math.Max(0, s[order[--keep]]);
            counts[i] = keep;
        }
        return counts;
    }
}
