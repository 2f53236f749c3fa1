namespace KvSharp.Compression.Budgets;

/// <summary>
/// Head level (KVzip's "head" level, DuoAttention-style): a head keeps all of its context or none of it. Heads are
/// ranked by importance — the maximum of their token scores, or a calibrated per-head profile when given — and the
/// best round(target × heads) heads keep everything (for token targets: the share of candidates the target is).
/// Dropped heads keep only the scorer's forced tokens (+∞) and the protected prefix.
/// </summary>
public sealed class HeadBudget(KeepTarget target, IReadOnlyList<float>? profile = null, string? profileName = null) : IBudget
{
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
        if (Profile != null && Profile.Count != heads)
            throw new KvSharpException($"head budget: the profile has {Profile.Count} heads but the cache has {heads} (layers × KV heads)");
        long total = 0;
        for (int i = 0; i < heads; i++) total += candidates[i].Length;
        double share = total == 0 ? 0 : (double)Target.ForAll(total, heads) / total;
        int full = (int)Math.Round(share * heads, MidpointRounding.AwayFromZero);
        var importance = new float[heads];
        for (int i = 0; i < heads; i++) importance[i] = Profile?[i] ?? MaxFinite(candidates[i]);
        var counts = new int[heads];
        var order = TopK.Descending(importance);
        for (int r = 0; r < full; r++) counts[order[r]] = candidates[order[r]].Length;
        return counts;
    }

    private static float MaxFinite(ReadOnlySpan<float> s)
    {
        float m = float.NegativeInfinity;
        foreach (float x in s) if (float.IsFinite(x) && x > m) m = x;
        return m;
    }
}
