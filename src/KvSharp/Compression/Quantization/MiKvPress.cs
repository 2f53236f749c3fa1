using System.Globalization;
using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// MiKV (Yang et al. 2024, "No token left behind"): instead of evicting the tokens an importance scorer ranks low, keep
/// them at low precision; the top <see cref="Top"/> share of each head's tokens (and the protected prefix) is stored in
/// <see cref="High"/>, the rest in <see cref="Low"/>. Text form <c>mikv(h2o):high=int8,low=int2,top=0.2,keys=channel</c>;
/// the scorer is any registered one, with its parameters inside the parentheses (<c>mikv(snapkv:window=16)</c>); default h2o.
/// </summary>
/// <remarks>
/// <para><see cref="PerTokenKeys"/> (<c>keys=token,qwindow=64</c>) is the paper's quantizer: quantized keys are
/// stored per token (one scale and minimum over all channels) after the per-(layer, head, channel) balancer
/// b_c = sqrt(max|q_c| / max|k_c|): keys are stored as b⊙k and queries meet them as q/b, so q·k is unchanged while
/// the few outlier key channels no longer set every token's range. max|k_c| is taken over the head's stored keys,
/// max|q_c| over the queries of the last <see cref="QueryWindow"/> context tokens (re-run on a fork, GQA group folded
/// by max; the paper takes every prefill query, which would cost a second prefill). b is rounded to powers of two so
/// the scaling is exact.</para>
/// <para><c>keys=channel</c> (the default) stores quantized keys per channel (KIVI's axis, each channel its own range over a block)
/// and applies no balancer: asymmetric per-channel quantization is equivariant to a positive per-channel scale
/// (Q(b·k)/b = Q(k) up to the f16 rounding of the stored parameters), so it would change nothing. Values are per
/// token either way. It is the default because on every real model measured it is the more accurate of the two
/// (kvsharp-needle-16m's 24 needle records: RULER score 0.85 against 0.33 with per-token keys, same scorer and tiers;
/// docs/quantization.md has the comparison).</para>
/// </remarks>
public sealed class MiKvPress : IKvPress
{
    private readonly ScoredPress _ranking;

    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">A share outside [0, 1] or a query window &lt; 1.</exception>
    public MiKvPress(IScorer scorer, FormatPair high, FormatPair low, double top = 0.2, bool perTokenKeys = false, int queryWindow = 64)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        if (!(top >= 0 && top <= 1)) throw new KvSharpException($"mikv: top must be in [0, 1], got {top}");
        if (queryWindow < 1) throw new KvSharpException($"mikv: the query window must be ≥ 1, got {queryWindow}");
        Scorer = scorer; High = high; Low = low; Top = top; PerTokenKeys = perTokenKeys; QueryWindow = queryWindow;
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

    /// <summary>Quantized keys per token after the query/key balancer (the paper), rather than per channel.</summary>
    public bool PerTokenKeys { get; }

    /// <summary>Newest context tokens whose queries give the balancer's max|q_c|.</summary>
    public int QueryWindow { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"mikv({Scorer.Text}):high={High},low={Low},top={Top},{(PerTokenKeys ? $"keys=token,qwindow={QueryWindow}" : "keys=channel")}");

    /// <inheritdoc />
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var keep = _ranking.Select(context);
        if (PerTokenKeys && (High.Keys.IsQuantized() || Low.Keys.IsQuantized())) Balance(context);
        for (int l = 0; l < context.Layers; l++)
        {
            if (context.Cache.SharedLayerSource(l) >= 0) continue;
            for (int h = 0; h < context.KvHeads; h++)
            {
                PrecisionTiers.Apply(context, l, h, Tiers(keep[l * context.KvHeads + h]), [High, Low], balancedKeys: PerTokenKeys);
            }
        }
    }

    /// <summary>The budget ranking the tokens: each head's top <see cref="Top"/> share of candidates (shared with the CUDA backend's press).</summary>
    internal IBudget RankingBudget => _ranking.Budget;

    /// <summary>A head's tiers from the ranking's keep flags: kept tokens in tier 0 (<see cref="High"/>), the others in tier 1 (<see cref="Low"/>).</summary>
    internal static byte[] Tiers(bool[] keep)
    {
        var tiers = new byte[keep.Length];
        for (int i = 0; i < keep.Length; i++) tiers[i] = keep[i] ? (byte)0 : (byte)1;
        return tiers;
    }

    /// <summary>Sets every own head's balance b_c = sqrt(max|q_c| / max|k_c|) (1 where either is 0); a head balanced before keeps its balance.</summary>
    private void Balance(PressContext context)
    {
        var cache = context.Cache;
        int n = context.Tokens.Count, w = Math.Min(QueryWindow, n), d = cache.HeadDim;
        var tokens = context.Tokens.Skip(n - w).ToArray();
        var stats = context.Observe(tokens, GroupFold.Max, rewindTo: n - w);
        var b = new float[d];
        for (int l = 0; l < context.Layers; l++)
        {
            if (cache.SharedLayerSource(l) >= 0) continue;
            for (int h = 0; h < context.KvHeads; h++)
            {
                if (cache.KeyBalance(l, h) is not null) continue;
                var keys = cache.ReadKeys(l, h);
                var qmax = stats.QueryAbsMax(l, h);
                for (int c = 0; c < d; c++)
                {
                    float kmax = 0;
                    for (int t = c; t < keys.Length; t += d) kmax = Math.Max(kmax, Math.Abs(keys[t]));
                    b[c] = qmax[c] > 0 && kmax > 0 ? MathF.Sqrt(qmax[c] / kmax) : 1f;
                }
                cache.SetKeyBalance(l, h, b);
            }
        }
    }
}
