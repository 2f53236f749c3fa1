using System.Globalization;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// ZipVL's mixed-precision KV (Fan et al. 2024): per layer, the important tokens are the fewest, by attention score,
/// whose normalised attention mass reaches <see cref="Tau"/>; they are stored in <see cref="High"/>, the rest in
/// <see cref="Low"/>. The ratio is decided per layer (ZipVL's adaptive ratio): each head's smallest set reaching
/// mass τ is measured, the layer's ratio is the mean of those shares over its heads, and every head of the layer keeps
/// that share of its tokens, best-scored first, at high precision. Text form
/// <c>zipvl(snapkv):tau=0.95,high=int8,low=int2</c> (default scorer snapkv: attention of the last window's queries).
/// </summary>
public sealed class ZipVlPress : IKvPress
{
    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">τ outside [0, 1].</exception>
    public ZipVlPress(IScorer scorer, double tau, FormatPair high, FormatPair low)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        if (!(tau >= 0 && tau <= 1)) throw new KvSharpException($"zipvl: tau must be in [0, 1], got {tau}");
        Scorer = scorer; Tau = tau; High = high; Low = low;
    }

    /// <summary>Attention scorer (non-negative scores).</summary>
    public IScorer Scorer { get; }

    /// <summary>Attention mass the important tokens must cover.</summary>
    public double Tau { get; }

    /// <summary>Formats of the important tokens.</summary>
    public FormatPair High { get; }

    /// <summary>Formats of the other tokens.</summary>
    public FormatPair Low { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"zipvl({Scorer.Text}):tau={Tau},high={High},low={Low}");

    /// <inheritdoc />
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var scores = Scorer.Score(context);
        for (int l = 0; l < context.Layers; l++)
        {
            if (context.Cache.SharedLayerSource(l) >= 0) continue;
            var first = Enumerable.Range(0, context.KvHeads).Select(h => scores[l, h].Length - Candidates(context, scores[l, h], l, h).Length).ToArray();
            var tiers = LayerTiers(Enumerable.Range(0, context.KvHeads).Select(h => scores[l, h]).ToArray(), first);
            for (int h = 0; h < context.KvHeads; h++) PrecisionTiers.Apply(context, l, h, tiers[h], [High, Low]);
        }
    }

    /// <summary>
    /// The tiers of one layer's heads from their <paramref name="scores"/> (ascending position), the first
    /// <paramref name="first"/>[head] tokens (the protected prefix) in tier 0: the layer's ratio is the mean over its heads
    /// of the share of candidates reaching mass τ, and each head's best that share of its candidates are tier 0
    /// (<see cref="High"/>), the others tier 1 (<see cref="Low"/>). Shared with the CUDA backend's press.
    /// </summary>
    internal byte[][] LayerTiers(IReadOnlyList<float[]> scores, IReadOnlyList<int> first)
    {
        double ratio = 0;
        for (int h = 0; h < scores.Count; h++)
        {
            var s = scores[h].AsSpan(first[h]);
            var tiers = MassTiers.Classify(s, [Tau]);
            ratio += s.Length == 0 ? 0 : tiers.Count(t => t == 0) / (double)s.Length / scores.Count;
        }
        var result = new byte[scores.Count][];
        for (int h = 0; h < scores.Count; h++)
        {
            var all = scores[h];
            var tiers = result[h] = new byte[all.Length];
            var candidates = all.AsSpan(first[h]);
            int keep = (int)Math.Ceiling(ratio * candidates.Length - 1e-9);
            var high = Budgets.TopK.KeepMask(candidates.ToArray(), keep);
            for (int i = 0; i < candidates.Length; i++) tiers[first[h] + i] = high[i] ? (byte)0 : (byte)1;
        }
        return result;
    }

    /// <summary>The head's scores after the protected prefix (which stays in tier 0, high precision).</summary>
    internal static float[] Candidates(PressContext context, float[] scores, int layer, int kvHead)
    {
        var positions = context.Cache.Positions(layer, kvHead);
        int p = 0;
        while (p < positions.Count && positions[p] < context.ProtectedPrefix) p++;
        return scores[p..];
    }
}
