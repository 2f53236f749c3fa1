using System.Globalization;
using KvSharp.Compression.Registry;

namespace KvSharp.Compression.Recall;

/// <summary>
/// ClusterKV's settings and text form <c>clusterkv[:param=value,...]</c>: <c>tokens</c> (per-head token budget of the
/// selected clusters, default 1024) or <c>keep</c> (that budget as a share of the tokens clustered when the cache is
/// attached), <c>clusters</c> (k-means clusters of the attached tokens, 400), <c>iters</c> (k-means iterations, 20),
/// <c>sinks</c> (first positions always attended, 4), <c>every</c> (tokens appended afterwards are attended in full
/// until this many have accumulated, then clustered as a batch, 320).
/// </summary>
public sealed record ClusterKvOptions
{
    /// <summary>Per (layer, KV head) budget of selected cluster tokens; ignored when <see cref="Keep"/> is set.</summary>
    public int Tokens { get; init; } = 1024;

    /// <summary>The budget as a share of the tokens clustered at attach time (null = <see cref="Tokens"/>).</summary>
    public double? Keep { get; init; }

    /// <summary>Clusters of the tokens the cache holds when attached (at most one per token).</summary>
    public int Clusters { get; init; } = 400;

    /// <summary>k-means iterations.</summary>
    public int Iterations { get; init; } = 20;

    /// <summary>First positions every decode step attends (the attention sink), outside the budget.</summary>
    public int Sinks { get; init; } = 4;

    /// <summary>Tokens appended after attach are attended in full until this many accumulate; then they are clustered.</summary>
    public int Every { get; init; } = 320;

    /// <summary>The canonical text form.</summary>
    public string Text => string.Create(CultureInfo.InvariantCulture,
        $"clusterkv:{(Keep is { } k ? $"keep={k:R}" : $"tokens={Tokens}")},clusters={Clusters},iters={Iterations},sinks={Sinks},every={Every}");

    /// <summary>The parameters of the text form.</summary>
    public static IReadOnlyList<PressParameter> Parameters { get; } =
    [
        new("tokens", "1024", "tokens of the selected clusters per (layer, KV head) and decode step, >= 1"),
        new("keep", "", "the budget as a share of the tokens clustered at attach time, in (0, 1] (instead of tokens)"),
        new("clusters", "400", "k-means clusters per (layer, KV head), >= 1"),
        new("iters", "20", "k-means iterations, >= 0"),
        new("sinks", "4", "first positions always attended, >= 0"),
        new("every", "320", "tokens appended later are attended in full until this many accumulate, then clustered, >= 1"),
    ];

    /// <summary>Whether <paramref name="text"/> names ClusterKV (<c>clusterkv</c> or <c>clusterkv:...</c>).</summary>
    public static bool Names(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string t = text.Trim();
        int colon = t.IndexOf(':');
        return (colon < 0 ? t : t[..colon]).Trim().Equals("clusterkv", StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>Parses the text form; a <see cref="KvSharpException"/> names a bad or unknown parameter and lists the valid ones.</summary>
    public static ClusterKvOptions Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string press = text.Trim();
        if (!Names(press)) throw new KvSharpException($"press '{press}': not clusterkv[:params]");
        int colon = press.IndexOf(':');
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in PressRegistry.ParseParameters(press, colon < 0 ? null : press[(colon + 1)..]))
            if (!values.TryAdd(k, v)) throw new KvSharpException($"press '{press}': parameter '{k}' is given twice");
        var args = new PressArguments(press, values);
        if (args.Has("tokens") && args.Has("keep")) throw args.Error("give one of tokens or keep, not both");
        var options = new ClusterKvOptions
        {
            Tokens = args.Int("tokens", 1024, 1),
            Keep = args.Has("keep") ? args.Double("keep", 1, 1e-9, 1) : null,
            Clusters = args.Int("clusters", 400, 1),
            Iterations = args.Int("iters", 20, 0),
            Sinks = args.Int("sinks", 4, 0),
            Every = args.Int("every", 320, 1),
        };
        args.CheckAllUsed(Parameters.Select(p => p.Name));
        return options;
    }
}
