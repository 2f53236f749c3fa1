namespace KvSharp.Compression.Budgets;

/// <summary>
/// Head level (KVzip's "head" level, DuoAttention-style): a head keeps all of its context or only its forced tokens.
/// Heads are ranked by importance — the maximum of their token scores, or a calibrated per-head profile when given.
/// Without a profile the best round(target × heads) heads keep everything (for token targets: the share of
/// candidates the target is). With a profile the budget B = the target's token count over all candidates, and the
/// forced tokens (+∞, e.g. sinks and a recent window) of every head are paid first; then, in profile order, each
/// head becomes whole while the total stays ≤ B, stopping at the first head that does not fit (the ranking is strict).
/// Dropped heads keep only the scorer's forced tokens and the protected prefix.
/// </summary>
public sealed class HeadBudget(KeepTarget target, IReadOnlyList<float>? profile = null, string? profileName = null) : IBudget
{
    private readonly Calibration.HeadProfile? _file;

    /// <summary>A head budget ranking heads by a calibrated profile read from <paramref name="file"/> (its shape is checked against the cache).</summary>
    public HeadBudget(KeepTarget target, Calibration.HeadProfile profile, string file) : this(target, profile?.Flatten(), file)
    {
        _file = profile;
    }

    /// <summary>How much is kept.</summary>
    public KeepTarget Target { get; } = target;

    /// <summary>Calibrated importance per head (layer × KvHeads + kvHead), or null to use the maximum score.</summary>
    public IReadOnlyList<float>? Profile { get; } = profile;

    /// <inheritdoc />
    public string Text => $"head:{Target}" + (profileName != null ? $",file={profileName}" : "");

    /// <inheritdoc />
    public int[] Allocate(HeadScores candidates)
    {
        int heads = candidates.HeadCount;
        _file?.CheckShape(candidates.Layers, candidates.KvHeads, profileName!);
        if (Profile != null && Profile.Count != heads)
            throw new KvSharpException($"head budget: the profile has {Profile.Count} heads but the cache has {heads} (layers × KV heads)");
        long total = 0;
        for (int i = 0; i < heads; i++) total += candidates[i].Length;
        long budget = Target.ForAll(total, heads);
        var importance = new float[heads];
        for (int i = 0; i < heads; i++) importance[i] = Profile?[i] ?? MaxFinite(candidates[i]);
        var counts = new int[heads];
        var order = TopK.Descending(importance);
        if (Profile == null)
        {
            double share = total == 0 ? 0 : (double)budget / total;
            int full = (int)Math.Round(share * heads, MidpointRounding.AwayFromZero);
            for (int r = 0; r < full; r++) counts[order[r]] = candidates[order[r]].Length;
            return counts;
        }
        long used = 0;
        for (int i = 0; i < heads; i++) used += counts[i] = Forced(candidates[i]);
        foreach (int i in order)
        {
            long extra = candidates[i].Length - counts[i];
            if (used + extra > budget) break;
            used += extra;
            counts[i] = candidates[i].Length;
        }
        return counts;
    }

    private static int Forced(ReadOnlySpan<float> s)
    {
        int n = 0;
        foreach (float x in s) if (float.IsPositiveInfinity(x)) n++;
        return n;
    }

    private static float MaxFinite(ReadOnlySpan<float> s)
    {
        float m = float.NegativeInfinity;
        foreach (float x in s) if (float.IsFinite(x) && x > m) m = x;
        return m;
    }
}
