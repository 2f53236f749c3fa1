namespace KvSharp.Compression.Quantization;

/// <summary>
/// Splits one head's tokens into tiers by cumulative attention mass (ZipVL, LeanKV): tokens sorted by score, highest
/// first; tier k holds the tokens added while the cumulative normalised mass before them is below threshold k
/// (so tier 0 is the smallest set reaching mass ≥ thresholds[0]); tokens past every threshold get tier
/// thresholds.Length. Tokens scored +∞ (a scorer's forced window) are tier 0 and outside the mass.
/// </summary>
public static class MassTiers
{
    /// <summary>Tier of every token. <paramref name="thresholds"/> must be increasing, in [0, 1].</summary>
    /// <exception cref="ArgumentException">Thresholds out of order or range, or a negative/NaN finite score.</exception>
    public static byte[] Classify(ReadOnlySpan<float> scores, ReadOnlySpan<double> thresholds)
    {
        for (int k = 0; k < thresholds.Length; k++)
            if (!(thresholds[k] >= 0 && thresholds[k] <= 1) || (k > 0 && thresholds[k] < thresholds[k - 1]))
                throw new ArgumentException("mass thresholds must be increasing, in [0, 1]", nameof(thresholds));
        int n = scores.Length;
        var tiers = new byte[n];
        double total = 0;
        foreach (float s in scores)
        {
            if (float.IsPositiveInfinity(s)) continue;
            if (!(s >= 0)) throw new KvSharpException($"mass tiers need non-negative attention scores (use an attention scorer such as snapkv or h2o), got {s}");
            total += s;
        }
        var order = new int[n];
        for (int i = 0; i < n; i++) order[i] = i;
        var keys = scores.ToArray();
        // Highest first; ties to the later token (recent tokens matter more), as the eviction budgets break them.
        Array.Sort(order, (a, b) => keys[b] != keys[a] ? keys[b].CompareTo(keys[a]) : b.CompareTo(a));
        double cumulative = 0;
        foreach (int i in order)
        {
            if (float.IsPositiveInfinity(keys[i])) { tiers[i] = 0; continue; }
            double before = total > 0 ? cumulative / total : 1;
            int tier = 0;
            while (tier < thresholds.Length && before >= thresholds[tier]) tier++;
            tiers[i] = (byte)tier;
            cumulative += keys[i];
        }
        return tiers;
    }
}
