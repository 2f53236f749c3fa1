using KvSharp.Compression.Presses;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// The quantization presses of the text form (<see cref="PressRegistry"/>): each is a whole unit of a press sequence,
/// <c>name[(scorer)][:params]</c>, e.g. <c>kivi:bits=2</c>, <c>kvzip:keep=0.4 + mikv(snapkv):high=int8,low=int2,top=0.2</c>.
/// The scorer in parentheses is any registered scorer with its own parameters.
/// </summary>
public static class QuantizationPresses
{
    private sealed record Entry(PressDescription Description, string? DefaultScorer, Func<PressArguments, IScorer?, IKvPress> Create);

    private static readonly Entry[] Entries =
    [
        new(new("kivi", PressPartKind.Scorer, "KIVI: keys per channel, values per token at 2/4 bits; the newest residual tokens stay full precision",
                [new("bits", "2", "2 or 4"), new("group", "32", "tokens per key group = channels per value group (the cache's block size)"), new("residual", "128", "newest tokens left unquantized")], []),
            null, (a, _) => new KiviPress(a.Int("bits", 2, 2, 4), a.Int("group", 32, 1), a.Int("residual", 128, 0))),
        new(new("kvtuner", PressPartKind.Scorer, "KVTuner: per-layer (key bits, value bits) pairs from a JSON file (kvsharp calibrate kvtuner)",
                [new("file", "", "configuration file, required")], []),
            null, (a, _) => new KvTunerPress(a.Raw("file") ?? throw a.Error("kvtuner needs file=PATH (a configuration written by 'kvsharp calibrate kvtuner')"))),
        new(new("mikv", PressPartKind.Scorer, "MiKV: the top share of tokens by a scorer at high precision, the rest at low precision instead of evicted",
                [new("high", "int8", "format (or KEYS:VALUES) of important tokens"), new("low", "int2", "format of the others"), new("top", "0.2", "share kept at high precision, in [0, 1]"),
                 new("keys", "channel", "channel: quantized keys per channel (measured better on the real models); token: per token after the query/key balancer (the paper)"),
                 new("qwindow", "64", "newest context tokens whose queries set the balancer's max|q|")], []),
            "h2o", (a, s) => new MiKvPress(s!, Pair(a, "high", "int8"), Pair(a, "low", "int2"), a.Double("top", 0.2, 0, 1),
                a.Choice("keys", "channel", "channel", "token") == "token", a.Int("qwindow", 64, 1))),
        new(new("zipvl", PressPartKind.Scorer, "ZipVL mixed precision: tokens reaching attention mass tau (ratio per layer) at high bits, the rest low",
                [new("tau", "0.95", "attention mass of the important tokens, in [0, 1]"), new("high", "int8", "format of important tokens"), new("low", "int2", "format of the others")], []),
            "snapkv", (a, s) => new ZipVlPress(s!, a.Double("tau", 0.95, 0, 1), Pair(a, "high", "int8"), Pair(a, "low", "int2"))),
        new(new("leankv", PressPartKind.Scorer, "LeanKV: per head, tokens reaching mass high at K8V4, up to mass low at K4V2, the rest pruned",
                [new("high", "0.9", "mass of the important tokens"), new("low", "0.99", "mass of important + less important tokens; the rest is pruned"),
                 new("important", "int8:int4", "format of important tokens"), new("less", "int4:int2", "format of less important tokens"),
                 new("prune", "true", "true: tokens past mass low are pruned; false: they are stored in the less important format")], []),
            "snapkv", (a, s) => new LeanKvPress(s!, a.Double("high", 0.9, 0, 1), a.Double("low", 0.99, 0, 1), Pair(a, "important", "int8:int4"), Pair(a, "less", "int4:int2"),
                a.Choice("prune", "true", "true", "false") == "true")),
        new(new("vidkv", PressPartKind.Scorer, "VidKV: keys 2-bit on the widest-range channels and 1-bit DFT signs along tokens on the others, values ternary per channel with each block's salient tokens at Int4",
                [new("outliers", "0.5", "share of key channels per block at 2 bits, in [0, 1]"), new("salient", "2", "value tokens per block kept at Int4"),
                 new("residual", "0", "newest tokens left unquantized")], []),
            null, (a, _) => new VidKvPress(a.Double("outliers", 0.5, 0, 1), a.Int("salient", 2, 0), a.Int("residual", 0, 0))),
    ];

    /// <summary>The quantization presses with their parameters.</summary>
    public static IReadOnlyList<PressDescription> Descriptions { get; } = Entries.Select(e => e.Description).ToArray();

    /// <summary>Whether <paramref name="part"/> (one top-level unit of a press text) names a quantization press.</summary>
    internal static bool Names(string part) => Find(NameOf(part)) != null;

    /// <summary>Builds the quantization press of <paramref name="part"/>, one unit of <paramref name="press"/>.</summary>
    internal static IKvPress Create(string press, string part)
    {
        string name = NameOf(part);
        var entry = Find(name)!;
        string rest = part[name.Length..].TrimStart();
        string? inner = null;
        if (rest.StartsWith('('))
        {
            int close = rest.LastIndexOf(')');
            if (close < 0) throw new KvSharpException($"press '{press}': unbalanced '('");
            inner = rest[1..close].Trim();
            rest = rest[(close + 1)..].Trim();
        }
        if (rest.Length > 0 && rest[0] != ':') throw new KvSharpException($"press '{press}': unexpected '{rest}' after '{name}'");
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in PressRegistry.ParseParameters(press, rest.Length > 0 ? rest[1..] : null))
            if (!values.TryAdd(k, v)) throw new KvSharpException($"press '{press}': parameter '{k}' is given twice");
        var args = new PressArguments(press, values);
        IScorer? scorer = null;
        if (inner != null && entry.DefaultScorer == null) throw args.Error($"{name} takes no scorer, got '({inner})'");
        if (entry.DefaultScorer != null) scorer = ScorerOf(args, name, inner is { Length: > 0 } ? inner : entry.DefaultScorer);
        var built = entry.Create(args, scorer);
        args.CheckAllUsed(entry.Description.Parameters.Select(p => p.Name));
        return built;
    }

    /// <summary>
    /// The scorer of <paramref name="text"/>, one registered scorer with its own parameters. Its default budget (KVzip's
    /// global one, SnapKV's uniform one) is dropped: the quantizer's tiers decide what each token becomes, so a budget
    /// written inside the parentheses would be silently ignored and is refused instead.
    /// </summary>
    private static IScorer ScorerOf(PressArguments args, string name, string text)
    {
        int colon = text.IndexOf(':');
        bool budgetGiven = text.Contains('+') || text.Contains('(')
            || PressRegistry.ParseParameters(text, colon < 0 ? null : text[(colon + 1)..]).Any(p => PressRegistry.BudgetParameters.Any(b => b.Name == p.Name));
        return !budgetGiven && PressRegistry.Parse(text) is ScoredPress ranking
            ? ranking.Scorer
            : throw args.Error($"{name}(…) takes one scorer with its own parameters and no budget (e.g. {name}(snapkv:window=16), {name}(kvzip)), got '{text}'");
    }

    private static FormatPair Pair(PressArguments args, string name, string fallback)
    {
        string text = args.Raw(name) ?? fallback;
        try { return FormatPair.Parse(text); }
        catch (KvSharpException e) { throw args.Error($"parameter {name}={text}: {e.Message}"); }
    }

    private static string NameOf(string part)
    {
        int end = part.IndexOfAny(['(', ':']);
        return (end < 0 ? part : part[..end]).Trim().ToLowerInvariant();
    }

    private static Entry? Find(string name) => Entries.FirstOrDefault(e => e.Description.Name == name);
}
