using System.Globalization;

namespace KvSharp.Compression.Budgets;

/// <summary>How a budget's size is given.</summary>
public enum KeepUnit
{
    /// <summary>A fraction of the candidate tokens (<c>keep=0.3</c>).</summary>
    Ratio,
    /// <summary>Tokens per (layer, KV head) (<c>tokens=64</c>).</summary>
    TokensPerHead,
    /// <summary>Tokens over all (layer, KV head) pairs together (<c>total=4096</c>).</summary>
    TotalTokens,
}

/// <summary>
/// How much a budget keeps: a keep ratio, a token count per head, or a total token count. Counts are of candidate
/// tokens (those after the protected prefix); tokens a scorer forces (score +∞) count against them.
/// </summary>
/// <param name="Unit">How <paramref name="Value"/> reads.</param>
/// <param name="Value">The ratio in [0, 1] or the token count (≥ 0).</param>
public readonly record struct KeepTarget(KeepUnit Unit, double Value)
{
    /// <summary>A keep ratio.</summary>
    public static KeepTarget Ratio(double ratio) => new(KeepUnit.Ratio, ratio);

    /// <summary>Tokens kept per head.</summary>
    public static KeepTarget PerHead(int tokens) => new(KeepUnit.TokensPerHead, tokens);

    /// <summary>Tokens kept over all heads together.</summary>
    public static KeepTarget Total(long tokens) => new(KeepUnit.TotalTokens, tokens);

    /// <summary>Tokens a head of <paramref name="candidates"/> keeps under a uniform split over <paramref name="heads"/> heads.</summary>
    public int ForHead(int candidates, int heads) => Math.Clamp(Unit switch
    {
        KeepUnit.Ratio => (int)Math.Round(Value * candidates, MidpointRounding.AwayFromZero),
        KeepUnit.TokensPerHead => (int)Value,
        _ => (int)Math.Floor(Value / heads), // floor: the heads together never exceed the total
    }, 0, candidates);

    /// <summary>Tokens kept over <paramref name="heads"/> heads holding <paramref name="candidates"/> candidates together.</summary>
    public long ForAll(long candidates, int heads) => Math.Clamp(Unit switch
    {
        KeepUnit.Ratio => (long)Math.Round(Value * candidates, MidpointRounding.AwayFromZero),
        KeepUnit.TokensPerHead => (long)Value * heads,
        _ => (long)Value,
    }, 0, candidates);

    /// <summary>The parameter form: <c>keep=R</c>, <c>tokens=N</c> or <c>total=N</c>.</summary>
    public override string ToString() => Unit switch
    {
        KeepUnit.Ratio => "keep=" + Value.ToString("R", CultureInfo.InvariantCulture),
        KeepUnit.TokensPerHead => "tokens=" + ((long)Value).ToString(CultureInfo.InvariantCulture),
        _ => "total=" + ((long)Value).ToString(CultureInfo.InvariantCulture),
    };
}
