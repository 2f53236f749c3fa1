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
            double ratio = 0;
            for (int h = 0; h < context.KvHeads; h++)
            {
                var s = Candidates(context, scores[l, h], l, h);
                var tiers = MassTiers.Classify(s, [Tau]);
                ratio += s.Length == 0 ? 0 : tiers.Count(t => t == 0) / (double)s.Length / context.KvHeads;
            }
            for (int h = 0; h < context.KvHeads; h++)
            {
                var all = scores[l, h];
                int first = all.Length - Candidates(context, all, l, h).Length;
                var tiers = new byte[all.Length];
                var candidates = all.AsSpan(first);
                int keep = (int)Math.Ceiling(ratio * candidates.Length - 1e-9);
                var high = Budgets.TopK.KeepMask(candidates.ToArray(), keep);
                for (int i = 0; i < candidates.Length; i++) tiers[first + i] = high[i] ? (byte)0 : (byte)1;
                PrecisionTiers.Apply(context, l, h, tiers, [High, Low]);
            }
        }
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
