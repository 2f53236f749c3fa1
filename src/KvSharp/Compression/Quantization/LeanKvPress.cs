using System.Globalization;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// LeanKV's unified prune + quantize (Zhang et al. 2024): on one importance scale per head (attention score), the
/// tokens covering the first <see cref="HighMass"/> of the head's normalised attention mass are stored K8V4, those
/// up to <see cref="LowMass"/> K4V2 (keys get more bits than values), and the least important rest is pruned. The
/// thresholds act per head, so heads with concentrated attention keep few tokens and diffuse heads many. Text form
/// <c>leankv(snapkv):high=0.9,low=0.99</c> (formats changeable with <c>important=int8:int4,less=int4:int2</c>;
/// <c>prune=false</c> stores the least important tokens in the less important tokens' formats instead of pruning them).
/// </summary>
public sealed class LeanKvPress : IKvPress
{
    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">Thresholds outside [0, 1] or out of order.</exception>
    public LeanKvPress(IScorer scorer, double highMass, double lowMass, FormatPair important, FormatPair less, bool prune = true)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        if (!(highMass >= 0 && highMass <= lowMass && lowMass <= 1))
            throw new KvSharpException($"leankv: need 0 ≤ high ≤ low ≤ 1, got high={highMass}, low={lowMass}");
        Scorer = scorer; HighMass = highMass; LowMass = lowMass; Important = important; Less = less; Prune = prune;
    }

    /// <summary>Attention scorer (non-negative scores).</summary>
    public IScorer Scorer { get; }

    /// <summary>Mass covered by the important (K8V4) tokens.</summary>
    public double HighMass { get; }

    /// <summary>Mass covered by important and less important tokens together; the rest is pruned.</summary>
    public double LowMass { get; }

    /// <summary>Formats of the important tokens (default K8V4).</summary>
    public FormatPair Important { get; }

    /// <summary>Formats of the less important tokens (default K4V2).</summary>
    public FormatPair Less { get; }

    /// <summary>
    /// Whether the tokens past <see cref="LowMass"/> are pruned (LeanKV); when false they are stored in <see cref="Less"/>'s
    /// formats, so no token is lost. A mass threshold alone cannot turn pruning off: with <c>low=1</c> the tokens after
    /// the cumulative mass rounds to 1 (zero-score tokens among them) would still be pruned.
    /// </summary>
    public bool Prune { get; }

    /// <inheritdoc />
    /// <remarks>prune=false is written only when set, so the text of a pruning LeanKV (and the result keys made from it) stays as before the option existed.</remarks>
    public string Text => string.Create(CultureInfo.InvariantCulture, $"leankv({Scorer.Text}):high={HighMass},low={LowMass},important={Important},less={Less}{(Prune ? "" : ",prune=false")}");

    /// <inheritdoc />
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var scores = Scorer.Score(context);
        for (int l = 0; l < context.Layers; l++)
        {
            if (context.Cache.SharedLayerSource(l) >= 0) continue;
            for (int h = 0; h < context.KvHeads; h++)
            {
                var all = scores[l, h];
                PrecisionTiers.Apply(context, l, h, Tiers(all, all.Length - ZipVlPress.Candidates(context, all, l, h).Length), Formats);
            }
        }
    }

    /// <summary>The formats of tiers 0, 1 and 2: <see cref="Important"/>, <see cref="Less"/>, pruned (null).</summary>
    internal FormatPair?[] Formats => [Important, Less, null];

    /// <summary>
    /// A head's tiers from its <paramref name="scores"/> (ascending position), the first <paramref name="first"/> tokens
    /// (the protected prefix) in tier 0: the candidates by cumulative mass (<see cref="MassTiers"/>). Shared with the CUDA
    /// backend's press.
    /// </summary>
    internal byte[] Tiers(float[] scores, int first)
    {
        var tiers = new byte[scores.Length]; // the protected prefix: tier 0
        // Without pruning, the least important tier joins the less important one (one re-encoding of one token set).
        MassTiers.Classify(scores.AsSpan(first), Prune ? [HighMass, LowMass] : [HighMass]).CopyTo(tiers, first);
        return tiers;
    }
}
