using System.Globalization;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// MiKV (Yang et al. 2024, "No token left behind"): instead of evicting the tokens an importance scorer ranks low, keep
/// them at low precision; the top <see cref="Top"/> share of each head's tokens (and the protected prefix) is stored in
/// <see cref="High"/>, the rest in <see cref="Low"/>. Text form <c>mikv(h2o):high=int8,low=int2,top=0.2</c>; the scorer
/// is any registered one, with its parameters inside the parentheses (<c>mikv(snapkv:window=16)</c>); default h2o.
/// </summary>
/// <remarks>
/// The per-channel query/key balancer of the paper (b_c = sqrt(max|q_c| / max|k_c|), keys scaled by b and queries by
/// 1/b) exists to tame key outlier channels before per-token quantization. This cache quantizes keys per channel
/// (each channel has its own scale and minimum over a block), and asymmetric per-channel quantization is equivariant
/// to a positive per-channel scale: Q(b·k)/b = Q(k) up to the f16 rounding of the stored parameters. The balancer is
/// therefore an identity on what this cache stores and is not applied (docs/quantization.md).
/// </remarks>
public sealed class MiKvPress : IKvPress
{
    private readonly ScoredPress _ranking;

    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">A share outside [0, 1].</exception>
    public MiKvPress(IScorer scorer, FormatPair high, FormatPair low, double top = 0.2)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        if (!(top >= 0 && top <= 1)) throw new KvSharpException($"mikv: top must be in [0, 1], got {top}");
        Scorer = scorer; High = high; Low = low; Top = top;
        _ranking = new ScoredPress(scorer, new UniformBudget(KeepTarget.Ratio(top)));
    }

    /// <summary>Ranks the tokens.</summary>
    public IScorer Scorer { get; }

    /// <summary>Formats of the important tokens.</summary>
    public FormatPair High { get; }

    /// <summary>Formats of the other tokens.</summary>
    public FormatPair Low { get; }

    /// <summary>Share of each head's candidate tokens kept at high precision.</summary>
    public double Top { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"mikv({Scorer.Text}):high={High},low={Low},top={Top}");

    /// <inheritdoc />
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var keep = _ranking.Select(context);
        for (int l = 0; l < context.Layers; l++)
        {
            if (context.Cache.SharedLayerSource(l) >= 0) continue;
            for (int h = 0; h < context.KvHeads; h++)
            {
                var k = keep[l * context.KvHeads + h];
                var tiers = new byte[k.Length];
                for (int i = 0; i < k.Length; i++) tiers[i] = k[i] ? (byte)0 : (byte)1;
                PrecisionTiers.Apply(context, l, h, tiers, [High, Low]);
            }
        }
    }
}
