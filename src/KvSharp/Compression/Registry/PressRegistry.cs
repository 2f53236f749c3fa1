using KvSharp.Compression.Budgets;
using KvSharp.Compression.Calibration;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Registry;

/// <summary>
/// Every press by name, and the text form that builds them (CLI <c>--press</c>, config files, the evaluation harness):
/// <code>
/// press    := unit ( '+' unit )*                 units apply one after the other (a + b)
/// unit     := scorer [ '+' budget ] [ ':' params ]  e.g. snapkv+pyramid:keep=0.25,window=32
///           | budget '(' scorer ')' [ ':' params ]  e.g. adakv(snapkv):keep=0.25
///           | selector '(' unit ')' [ ':' params ]  e.g. kvcrush(h2o):keep=0.2,reps=0.05,anchor=mean
/// params   := name=value ( ',' name=value )*      routed to the scorer or the budget that declares them
/// </code>
/// Each part may carry its own parameters (<c>snapkv:window=16+pyramid:keep=0.2</c>). Budgets take one of
/// <c>keep=R</c> (ratio of candidate tokens), <c>tokens=N</c> (per head) or <c>total=N</c> (all heads together);
/// <c>level=pair|pair-uniform|head</c> picks the global / uniform / head budget (KVzip's names). Without a budget a
/// scorer uses its default (KVzip: pair, the others: uniform) and its default keep ratio.
/// </summary>
public static class PressRegistry
{
    private sealed record ScorerEntry(PressDescription Description, string DefaultBudget, double DefaultKeep, Func<PressArguments, IScorer> Create);

    private sealed record BudgetEntry(PressDescription Description, Func<PressArguments, KeepTarget, IBudget> Create, bool TakesTarget = true);

    private sealed record SelectorEntry(PressDescription Description, Func<PressArguments, ScoredPress, IKvPress> Create);

    private static readonly SelectorEntry[] Selectors =
    [
        new(new("kvcrush", PressPartKind.Selector, "KVCrush: keeps representatives of the evicted tokens, picked along their Hamming order to an anchor",
                [new("reps", "0.05", "extra share of candidates kept as representatives, in [0, 1]"),
                 new("anchor", "mean", "zeros | ones | random | mean | alternate"), new("seed", "0", "seed of the random anchor")], []),
            (a, inner) =>
            {
                var anchor = Enum.Parse<KvCrushAnchor>(a.Choice("anchor", "mean", "zeros", "ones", "random", "mean", "alternate"), ignoreCase: true);
                return new KvCrushPress(inner, a.Double("reps", 0.05, 0, 1), anchor, a.Int("seed", 0, int.MinValue));
            }),
    ];

    private static readonly PressParameter[] TargetParameters =
    [
        new("keep", "scorer's", "ratio of candidate tokens kept, in [0, 1]"),
        new("tokens", "", "tokens kept per (layer, KV head) instead of a ratio"),
        new("total", "", "tokens kept over all (layer, KV head) pairs together instead of a ratio"),
        new("level", "", "pair | pair-uniform | head: the global, uniform or head budget (instead of '+budget')"),
    ];

    private static readonly Dictionary<string, string> Levels = new(StringComparer.OrdinalIgnoreCase)
    {
        ["pair"] = "global",
        ["pair-uniform"] = "uniform",
        ["head"] = "head",
    };

    private static readonly PressParameter[] SnapKvParameters =
    [
        new("window", "32", "observed last queries, always kept, >= 1"),
        new("kernel", "7", "pooling kernel, odd"),
        new("pool", "avg", "avg | max"),
    ];

    private static SnapKvScorer SnapKv(PressArguments a) =>
        new(a.Int("window", 32, 1), a.Int("kernel", 7, 1), a.Choice("pool", "avg", "avg", "max"));

    private static readonly ScorerEntry[] Scorers =
    [
        new(new("streamingllm", PressPartKind.Scorer, "StreamingLLM: attention sinks + the most recent tokens",
                [new("sinks", "4", "first positions always kept")], ["streaming"]),
            "uniform", 0.5, a => new StreamingLlmScorer(a.Int("sinks", 4, 0))),
        new(new("keynorm", PressPartKind.Scorer, "score = -||k||2 (low-norm keys draw attention)", [], ["knorm"]),
            "uniform", 0.5, _ => new KeyNormScorer()),
        new(new("random", PressPartKind.Scorer, "random scores (baseline)", [new("seed", "0", "random seed")], []),
            "uniform", 0.5, a => new RandomScorer(a.Int("seed", 0, int.MinValue))),
        new(new("snapkv", PressPartKind.Scorer, "SnapKV: attention of the last window queries, group mean, pooled; window kept", SnapKvParameters, []),
            "uniform", 0.5, SnapKv),
        new(new("h2o", PressPartKind.Scorer, "H2O: attention summed over all prefill queries + a recent window",
                [new("window", "32", "most recent tokens always kept, >= 0"), new("chunk", "64", "prefill queries re-run per observation (1 = exact, slow)")], ["heavyhitters"]),
            "uniform", 0.5, a => new H2oScorer(a.Int("window", 32, 0), a.Int("chunk", 64, 1))),
        new(new("tova", PressPartKind.Scorer, "TOVA: attention of the last query, group mean", [], []),
            "uniform", 0.5, _ => new TovaScorer()),
        new(new("kvzip", PressPartKind.Scorer, "KVzip: max attention while the model repeats the context (query-agnostic); level=pair by default",
                [new("chunk", "2000", "context tokens per repeat run, >= 1"), new("plus", "false", "true = KVzip+: weights scaled by ||W_o v|| / ||hidden||")], []),
            "global", 0.3, a => new KvzipScorer(a.Int("chunk", 2000, 1), a.Choice("plus", "false", "false", "true") == "true")),
        new(new("kvzipplus", PressPartKind.Scorer, "KVzip+: KVzip with each attention weight scaled by ||W_o^h v_t|| / ||x_q|| (= kvzip:plus=true)",
                [new("chunk", "2000", "context tokens per repeat run, >= 1")], ["kvzip-plus"]),
            "global", 0.3, a => new KvzipScorer(a.Int("chunk", 2000, 1), plus: true)),
        new(new("kvcompress", PressPartKind.Scorer, "KV-Compress: whole blocks ranked across layers and heads by squared window attention",
                [new("window", "32", "observed last queries, kept, >= 1"), new("block", "32", "tokens per ranked block, >= 1")], ["kv-compress"]),
            "global", 0.5, a => new KvCompressScorer(a.Int("window", 32, 1), a.Int("block", 32, 1))),
        new(new("zipvl", PressPartKind.Scorer, "ZipVL: accumulated attention normalized by observing queries; dynamic budget by default",
                [new("chunk", "64", "prefill queries re-run per observation, >= 1")], []),
            "dynamic", 1, a => new ZipVlScorer(a.Int("chunk", 64, 1))),
        new(new("rkv", PressPartKind.Scorer, "R-KV: 0.07 x window importance - 0.93 x key redundancy",
                [new("window", "8", "observed last queries, kept, >= 1"), new("kernel", "7", "max-pooling kernel, odd"),
                 new("lambda", "0.07", "weight of importance, in [0, 1]"), new("threshold", "0.5", "cosine similarity counted as redundant, in [-1, 1]")], ["r-kv"]),
            "uniform", 0.5, a => new RkvScorer(a.Int("window", 8, 1), a.Int("kernel", 7, 1), a.Double("lambda", 0.07, 0, 1), a.Double("threshold", 0.5, -1, 1))),
        new(new("dbudgetkv", PressPartKind.Scorer, "DBudgetKV: SnapKV scores, pruned until a share of attention mass is lost (dynamic budget)", SnapKvParameters, ["dbudget"]),
            "dynamic", 1, SnapKv),
    ];

    private static readonly BudgetEntry[] Budgets =
    [
        new(new("uniform", PressPartKind.Budget, "every head keeps the same share (KVzip pair-uniform)", [], ["pair-uniform"]),
            (_, t) => new UniformBudget(t)),
        new(new("global", PressPartKind.Budget, "one threshold over all layers x heads x tokens (KVzip pair level)", [], ["pair"]),
            (_, t) => new GlobalBudget(t)),
        new(new("head", PressPartKind.Budget, "whole heads keep or drop their context, ranked by max score or a calibrated profile",
                [new("file", "", "head scores from 'kvsharp calibrate kvzip-heads' (no scoring pass with kvzip)"),
                 new("sinks", "4", "with kvzip and file: first positions every head keeps"), new("window", "32", "with kvzip and file: recent tokens every head keeps")], []),
            (a, t) => a.Raw("file") is { } f ? new HeadBudget(t, HeadProfile.Load(f, KvzipHeadCalibration.Method), f) : new HeadBudget(t)),
        new(new("pyramid", PressPartKind.Budget, "PyramidKV: per-layer budgets decreasing linearly with depth",
                [new("beta", "20", "max/min spread of the layer budgets, > 0")], []),
            (a, t) => new PyramidBudget(t, a.Double("beta", 20, 1e-9, 1e9))),
        new(new("adakv", PressPartKind.Budget, "AdaKV: per-layer top-k across heads, each head keeping a floor",
                [new("floor", "0.2", "fraction of its uniform share each head keeps, in [0, 1]")], []),
            (a, t) => new AdaKvBudget(t, a.Double("floor", 0.2, 0, 1))),
        new(new("baklava", PressPartKind.Budget, "BaKlaVa: per-head budgets from a calibrated head-importance profile (kvsharp calibrate baklava)",
                [new("file", "", "head profile from 'kvsharp calibrate baklava', required"), new("floor", "0.2", "share of its uniform budget each head keeps at least, in [0, 1]"),
                 new("power", "1", "exponent of the importances (0 = uniform), >= 0")], []),
            (a, t) => new BaklavaBudget(t, HeadProfile.Load(a.Raw("file") ?? throw a.Error("baklava needs file=PATH (a profile written by 'kvsharp calibrate baklava')"), BaklavaProfiler.Method),
                a.Raw("file")!, a.Double("floor", 0.2, 0, 1), a.Double("power", 1, 0, 1e6))),
        new(new("dynamic", PressPartKind.Budget, "no fixed ratio: each head prunes its least important tokens up to a share of its attention mass",
                [new("mass", "0.01", "share of a head's attention mass that may be pruned, in [0, 1]")], []),
            (a, _) => new DynamicBudget(a.Double("mass", 0.01, 0, 1)), TakesTarget: false),
    ];

    /// <summary>Every registered scorer and budget with its parameters.</summary>
    public static IReadOnlyList<PressDescription> Presses { get; } =
        [.. Scorers.Select(s => s.Description), .. Budgets.Select(b => b.Description), .. Selectors.Select(s => s.Description)];

    /// <summary>The parameters every budget takes (keep, tokens, total, level).</summary>
    public static IReadOnlyList<PressParameter> BudgetParameters => TargetParameters;

    /// <summary>
    /// Builds the press <paramref name="text"/> describes. Throws <see cref="KvSharpException"/> naming the problem
    /// and listing the valid names or parameters when the text is malformed, names an unknown method or parameter, or
    /// gives a bad value.
    /// </summary>
    public static IKvPress Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string press = text.Trim();
        if (press.Length == 0) throw new KvSharpException($"press '': empty; {Known()}");
        var built = new List<IKvPress>();
        List<Segment>? unit = null;
        foreach (var part in SplitTopLevel(press, press))
        {
            // KVSharer's layer map is a whole unit of its own.
            if (Sharing.KvSharerPress.Names(part))
            {
                if (unit != null) built.Add(Build(press, unit));
                unit = null;
                built.Add(Sharing.KvSharerPress.Create(press, part));
                continue;
            }
            // A quantization press (kivi, mikv(...), ...) is a whole unit of its own.
            if (Quantization.QuantizationPresses.Names(part))
            {
                if (unit != null) built.Add(Build(press, unit));
                unit = null;
                built.Add(Quantization.QuantizationPresses.Create(press, part));
                continue;
            }
            foreach (var segment in Flatten(press, part))
            {
                if (FindScorer(segment.Name) != null)
                {
                    if (unit != null) built.Add(Build(press, unit));
                    unit = [segment];
                }
                else if (FindBudget(segment.Name) != null || FindSelector(segment.Name) != null)
                {
                    if (unit == null) throw new KvSharpException($"press '{press}': '{segment.Name}' needs a scorer before it (e.g. snapkv+{segment.Name}) or inside it ({segment.Name}(snapkv)); {Known()}");
                    unit.Add(segment);
                }
                else throw new KvSharpException($"press '{press}': unknown method '{segment.Name}'; {Known()}");
            }
        }
        if (unit != null) built.Add(Build(press, unit));
        return built.Count == 1 ? built[0] : new SequentialPress(built);
    }

    private sealed record Segment(string Name, string? Parameters);

    /// <summary>Splits at top-level '+' and unwraps <c>budget(inner)</c> into inner's segments followed by the budget.</summary>
    private static IEnumerable<Segment> Flatten(string press, string text)
    {
        foreach (var part in SplitTopLevel(press, text))
        {
            int open = part.IndexOf('('), colon = part.IndexOf(':');
            if (open >= 0 && (colon < 0 || open < colon))
            {
                int close = Matching(press, part, open);
                string name = part[..open].Trim().ToLowerInvariant(), rest = part[(close + 1)..].Trim();
                if (rest.Length > 0 && rest[0] != ':') throw new KvSharpException($"press '{press}': unexpected '{rest}' after '{part[..(close + 1)]}'");
                if (FindBudget(name) == null && FindSelector(name) == null)
                    throw new KvSharpException($"press '{press}': only a budget or a selector can wrap a scorer, and '{name}' is not one; budgets: {Names(PressPartKind.Budget)}; selectors: {Names(PressPartKind.Selector)}");
                foreach (var inner in Flatten(press, part[(open + 1)..close])) yield return inner;
                yield return new Segment(name, rest.Length > 0 ? rest[1..] : null);
            }
            else
            {
                string name = (colon < 0 ? part : part[..colon]).Trim();
                if (name.Length == 0) throw new KvSharpException($"press '{press}': a part has no name; {Known()}");
                if (name.Contains(')')) throw new KvSharpException($"press '{press}': unbalanced ')'");
                yield return new Segment(name.ToLowerInvariant(), colon < 0 ? null : part[(colon + 1)..]);
            }
        }
    }

    private static List<string> SplitTopLevel(string press, string text)
    {
        var parts = new List<string>();
        int depth = 0, start = 0;
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] == '(') depth++;
            else if (text[i] == ')' && --depth < 0) throw new KvSharpException($"press '{press}': unbalanced ')'");
            else if (text[i] == '+' && depth == 0) { parts.Add(text[start..i]); start = i + 1; }
        }
        if (depth != 0) throw new KvSharpException($"press '{press}': unbalanced '('");
        parts.Add(text[start..]);
        if (parts.Any(p => p.Trim().Length == 0)) throw new KvSharpException($"press '{press}': empty part around '+'; {Known()}");
        return parts.Select(p => p.Trim()).ToList();
    }

    private static int Matching(string press, string part, int open)
    {
        int depth = 0;
        for (int i = open; i < part.Length; i++)
        {
            if (part[i] == '(') depth++;
            else if (part[i] == ')' && --depth == 0) return i;
        }
        throw new KvSharpException($"press '{press}': unbalanced '('");
    }

    private static IKvPress Build(string press, List<Segment> unit)
    {
        var scorer = FindScorer(unit[0].Name)!;
        var budgets = unit.Skip(1).Select(s => FindBudget(s.Name)).OfType<BudgetEntry>().ToList();
        var selectors = unit.Skip(1).Select(s => FindSelector(s.Name)).OfType<SelectorEntry>().ToList();
        if (selectors.Count > 1)
            throw new KvSharpException($"press '{press}': {unit[0].Name} has {selectors.Count} selectors; give one");
        if (budgets.Count > 1)
            throw new KvSharpException($"press '{press}': {unit[0].Name} has {budgets.Count} budgets ({string.Join(", ", budgets.Select(b => b.Description.Name))}); give one");
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var s in unit)
            foreach (var (k, v) in ParseParameters(press, s.Parameters))
                if (!values.TryAdd(k, v)) throw new KvSharpException($"press '{press}': parameter '{k}' is given twice");
        var args = new PressArguments(press, values);

        string? level = args.Raw("level");
        BudgetEntry budget;
        if (level != null)
        {
            if (budgets.Count > 0) throw args.Error($"give either level={level} or +{budgets[0].Description.Name}, not both");
            budget = Levels.TryGetValue(level, out var b) ? FindBudget(b)! : throw args.Error($"parameter level={level} must be one of {string.Join(", ", Levels.Keys)}");
        }
        else budget = budgets.Count > 0 ? budgets[0] : FindBudget(scorer.DefaultBudget)!;

        KeepTarget target = default;
        if (budget.TakesTarget) target = Target(args, scorer.DefaultKeep);
        IKvPress built;
        try
        {
            var scored = new ScoredPress(scorer.Create(args), budget.Create(args, target));
            // KVzip's calibrated head level ranks heads by the file alone: no scoring pass over the context.
            if (scored is { Scorer: KvzipScorer, Budget: HeadBudget { Profile: not null } head })
                built = selectors.Count == 0 ? new KvzipHeadPress(head, args.Int("sinks", 4, 0), args.Int("window", 32, 0))
                    : throw args.Error("the calibrated head level (kvzip with head:file=...) takes no selector");
            else built = selectors.Count > 0 ? selectors[0].Create(args, scored) : scored;
        }
        catch (KvSharpException e) when (!e.Message.StartsWith("press '", StringComparison.Ordinal))
        {
            throw args.Error(e.Message); // a constructor's range check: name the press text too
        }
        var valid = scorer.Description.Parameters.Concat(budget.Description.Parameters).Concat(selectors.SelectMany(x => x.Description.Parameters)).Select(p => p.Name)
            .Concat(budget.TakesTarget ? TargetParameters.Select(p => p.Name) : ["level"]);
        args.CheckAllUsed(valid);
        return built;
    }

    private static KeepTarget Target(PressArguments args, double defaultKeep)
    {
        var given = new[] { "keep", "tokens", "total" }.Where(args.Has).ToList();
        if (given.Count > 1) throw args.Error($"give one of keep, tokens or total, not {string.Join(" and ", given)}");
        if (args.Has("tokens")) return KeepTarget.PerHead(args.Int("tokens", 0, 0));
        if (args.Has("total")) return KeepTarget.Total(args.Int("total", 0, 0));
        return KeepTarget.Ratio(args.Double("keep", defaultKeep, 0, 1));
    }

    internal static IEnumerable<(string Name, string Value)> ParseParameters(string press, string? text)
    {
        if (text == null) yield break;
        if (text.Trim().Length == 0) throw new KvSharpException($"press '{press}': nothing after ':' (expected name=value,...)");
        foreach (var item in text.Split(','))
        {
            int eq = item.IndexOf('=');
            string name = eq < 0 ? item.Trim() : item[..eq].Trim().ToLowerInvariant();
            if (eq <= 0 || name.Length == 0 || item[(eq + 1)..].Trim().Length == 0)
                throw new KvSharpException($"press '{press}': parameter '{item.Trim()}' is not name=value");
            yield return (name, item[(eq + 1)..].Trim());
        }
    }

    private static ScorerEntry? FindScorer(string name) =>
        Scorers.FirstOrDefault(s => s.Description.Name == name || s.Description.Aliases.Contains(name));

    private static BudgetEntry? FindBudget(string name) =>
        Budgets.FirstOrDefault(b => b.Description.Name == name || b.Description.Aliases.Contains(name));

    private static SelectorEntry? FindSelector(string name) =>
        Selectors.FirstOrDefault(s => s.Description.Name == name || s.Description.Aliases.Contains(name));

    private static string Names(PressPartKind kind) => string.Join(", ", Presses.Where(p => p.Kind == kind).Select(p => p.Name));

    private static string Known() => $"scorers: {Names(PressPartKind.Scorer)}; budgets: {Names(PressPartKind.Budget)}; selectors: {Names(PressPartKind.Selector)}; quantizers: {string.Join(", ", Quantization.QuantizationPresses.Descriptions.Select(d => d.Name))}; sharing: {Sharing.KvSharerPress.Name}";
}
