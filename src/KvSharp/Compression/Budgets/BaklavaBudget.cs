using System.Globalization;
using KvSharp.Compression.Calibration;

namespace KvSharp.Compression.Budgets;

/// <summary>
/// BaKlaVa: per-head budgets from a calibrated head-importance profile (<c>kvsharp calibrate baklava</c>), for any
/// scorer (<c>baklava(snapkv):keep=0.3,file=F.json</c>). With n_i the candidates of head i, C_i its uniform share
/// (<see cref="KeepTarget.ForHead"/>), B the target over all heads (<see cref="KeepTarget.ForAll"/>) and I_i its importance:
/// <list type="number">
/// <item>every head first gets f_i = max(its forced tokens, ⌊floor × C_i⌋), capped at n_i;</item>
/// <item>the rest R = B − Σ f_i is shared in proportion to w_i = max(I_i, 0)^power × n_i among the heads not yet full,
/// water-filling: a head whose share would pass n_i is capped there and the others share what is left;</item>
/// <item>shares are floored and the tokens left over go one each to the largest fractional parts (ties: lower head index).</item>
/// </list>
/// power = 0 gives the uniform split; larger powers favour important heads more (the paper searches this trade-off by
/// perplexity; here it is a parameter).
/// </summary>
public sealed class BaklavaBudget : IBudget
{
    private readonly float[] _importance;

    /// <summary>Creates the budget from a profile read from <paramref name="file"/>.</summary>
    /// <exception cref="KvSharpException">floor outside [0, 1] or a negative power.</exception>
    public BaklavaBudget(KeepTarget target, HeadProfile profile, string file, double floor = 0.2, double power = 1)
    {
        ArgumentNullException.ThrowIfNull(profile);
        ArgumentNullException.ThrowIfNull(file);
        if (!(floor >= 0 && floor <= 1)) throw new KvSharpException($"baklava: floor must be in [0, 1], got {floor}");
        if (!(power >= 0) || !double.IsFinite(power)) throw new KvSharpException($"baklava: power must be ≥ 0, got {power}");
        Target = target;
        Profile = profile;
        File = file;
        Floor = floor;
        Power = power;
        _importance = profile.Flatten();
    }

    /// <summary>How much is kept over all heads.</summary>
    public KeepTarget Target { get; }

    /// <summary>The head importances.</summary>
    public HeadProfile Profile { get; }

    /// <summary>The profile's file.</summary>
    public string File { get; }

    /// <summary>Share of its uniform budget each head keeps at least.</summary>
    public double Floor { get; }

    /// <summary>Exponent of the importances in the allocation.</summary>
    public double Power { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"baklava:{Target},file={File},floor={Floor:R},power={Power:R}");

    /// <inheritdoc />
    /// <exception cref="KvSharpException">The profile's shape differs from the cache's.</exception>
    public int[] Allocate(HeadScores candidates)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        Profile.CheckShape(candidates.Layers, candidates.KvHeads, File);
        int heads = candidates.HeadCount;
        var n = new long[heads];
        long total = 0;
        for (int i = 0; i < heads; i++) total += n[i] = candidates[i].Length;
        long budget = Target.ForAll(total, heads);
        var counts = new long[heads];
        long used = 0;
        for (int i = 0; i < heads; i++)
        {
            long floor = (long)Math.Floor(Floor * Target.ForHead((int)n[i], heads));
            used += counts[i] = Math.Min(n[i], Math.Max(Forced(candidates[i]), floor));
        }
        Share(budget - used, n, counts);
        return counts.Select(c => (int)c).ToArray();
    }

    /// <summary>Water-fills <paramref name="rest"/> tokens over the heads in proportion to importance^power × candidates.</summary>
    private void Share(long rest, long[] n, long[] counts)
    {
        int heads = n.Length;
        var share = new double[heads];
        var open = Enumerable.Range(0, heads).Where(i => counts[i] < n[i]).ToList();
        double left = rest;
        while (left > 0 && open.Count > 0)
        {
            double weights = open.Sum(Weight), sizes = open.Sum(i => (double)n[i]);
            // Every open head at importance 0: split by size instead.
            double Portion(int i) => weights > 0 ? left * Weight(i) / weights : left * n[i] / sizes;
            var capped = open.Where(i => counts[i] + Portion(i) >= n[i]).ToList();
            if (capped.Count == 0)
            {
                foreach (int i in open) share[i] = Portion(i);
                break;
            }
            foreach (int i in capped) left -= share[i] = n[i] - counts[i];
            open.RemoveAll(capped.Contains);
        }
        var whole = new long[heads];
        long given = 0;
        for (int i = 0; i < heads; i++) given += whole[i] = (long)Math.Floor(share[i] + 1e-9);
        var byFraction = Enumerable.Range(0, heads).Where(i => counts[i] + whole[i] < n[i])
            .OrderByDescending(i => share[i] - whole[i]).ThenBy(i => i).ToList();
        for (int r = 0; r < byFraction.Count && given < rest; r++, given++) whole[byFraction[r]]++;
        for (int i = 0; i < heads; i++) counts[i] += whole[i];

        double Weight(int i) => Math.Pow(Math.Max(_importance[i], 0), Power) * n[i];
    }

    private static long Forced(ReadOnlySpan<float> s)
    {
        long c = 0;
        foreach (float x in s) if (float.IsPositiveInfinity(x)) c++;
        return c;
    }
}
