using System.CommandLine;
using KvSharp.Compression.Sessions;
using KvSharp.Evaluation.Tasks;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;
using Spectre.Console;

namespace KvSharp.Cli.Commands;

/// <summary>
/// <c>kvsharp demo</c>: the main job on the embedded model. Builds a long document with hidden facts, prefills it
/// once, compresses a copy of its KV cache with a press (KVzip by default), asks one question per fact of both the
/// full and the compressed cache (each question rolled back afterwards) and shows the answers side by side with the
/// KV bytes and times before and after.
/// </summary>
internal static class DemoCommand
{
    /// <summary>Where the build copies the embedded model (see KvSharp.Cli.csproj).</summary>
    public static string EmbeddedModel => Path.Combine(AppContext.BaseDirectory, "models", "kvsharp-needle-16m");

    /// <summary>The press the demo shows unless <c>--press</c> says otherwise.</summary>
    public const string DefaultPress = "kvzip:keep=0.3";

    public static Command Create(CliContext context)
    {
        var model = new Option<string?>("--model", "-m") { Description = "Model to run (default: the embedded kvsharp-needle-16m)", HelpName = "PATH" };
        var sentences = new Option<int>("--sentences") { Description = "Haystack sentences (~6 tokens each)", DefaultValueFactory = _ => 500 }.Int();
        var facts = new Option<int>("--facts") { Description = "Facts hidden in the document (one question each)", DefaultValueFactory = _ => 4 }.Int();
        var seed = new Option<int>("--seed") { Description = "Seed of the document's random facts", DefaultValueFactory = _ => 1 }.Int();
        var threads = new Option<int?>("--threads", "-t") { Description = "CPU threads (default: all cores)", HelpName = "N" }.Int();
        var kvCache = new Option<string?>("--kv-cache") { Description = "KV cache block formats (FORMAT or KEYS:VALUES, e.g. f16, int4:int2); default f16", HelpName = "SPEC" };
        var press = new Option<string>("--press") { Description = $"Compression press for the compressed cache (e.g. kvzip:keep=0.2, snapkv:keep=0.3, clusterkv:keep=0.1, kvzip:keep=0.5+clusterkv:tokens=256); none = full cache only", DefaultValueFactory = _ => DefaultPress, HelpName = "PRESS" };

        var command = new Command("demo", "Hide facts in a long document, prefill it once, compress its KV cache (KVzip) and ask for each fact of the full and the compressed cache");
        command.Options.Add(model);
        command.Options.Add(sentences);
        command.Options.Add(facts);
        command.Options.Add(seed);
        command.Options.Add(threads);
        command.Options.Add(kvCache);
        command.Options.Add(press);
        command.SetAction(parse =>
        {
            int n = parse.GetValue(sentences), f = parse.GetValue(facts);
            if (n < 1) throw new UsageException($"--sentences must be ≥ 1, got {n}");
            if (f < 1) throw new UsageException($"--facts must be ≥ 1, got {f}");
            if (parse.GetValue(threads) is { } t)
            {
                if (t <= 0) throw new UsageException($"--threads must be > 0, got {t}");
                KvSharp.Compute.Cpu.CpuThreads.Count = t;
            }
            ContextPress? parsed;
            try { parsed = ContextPress.Parse(parse.GetValue(press)!); }
            catch (KvSharpException e) { throw new UsageException($"--press: {e.Message}"); }
            if (parsed.Press == null && parsed.Recall == null) parsed = null; // "none"
            string path = parse.GetValue(model) ?? EmbeddedModel;
            if (!File.Exists(path) && !Directory.Exists(path)) throw new KvSharpException($"{path}: model not found");
            Run(path, NeedleDocument.Create(n, f, parse.GetValue(seed)), ModelOptions.ParseKvCache(parse.GetValue(kvCache)), parsed, context);
            return 0;
        });
        return command;
    }

    private static void Run(string path, NeedleDocument document, KvSharp.Cache.KvCacheSpec? spec, ContextPress? press, CliContext context)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(context.Output) });
        using var model = LanguageModel.Load(path);
        var contextIds = model.Encode(document.Context);
        console.MarkupLine($"[bold]{Markup.Escape(Path.GetFileName(Path.TrimEndingDirectorySeparator(path)))}[/]: document of {contextIds.Length} tokens with {document.Facts.Count} hidden facts");

        var options = new CompressedContextOptions { Cache = spec ?? KvSharp.Cache.KvCacheSpec.Parse("f16") };
        using var full = CompressedContext.Create(model, contextIds, options);
        using var compressed = press == null ? null : full.Compress(press);

        var generation = new GenerationOptions { MaxTokens = 16, Sampler = SamplerOptions.Greedy, StopStrings = ["\n"] };
        var table = new Table().AddColumn("question: the magic number for").AddColumn("expected").AddColumn("full cache");
        if (compressed != null) table.AddColumn("compressed cache");
        int fullCorrect = 0, compressedCorrect = 0;
        var recall = new List<RecallStatistics>();
        var fullDecode = new List<double>();
        var compressedDecode = new List<double>();
        foreach (var fact in document.Facts)
        {
            var question = model.Encode(NeedleDocument.Question(fact), addBos: false);
            var row = new List<string> { fact.Key, fact.Value };
            var a = full.Ask(question, generation, cancellation: context.Cancellation);
            fullDecode.Add(a.Generation.DecodeTokensPerSecond);
            row.Add(Cell(a, fact, ref fullCorrect));
            if (compressed != null)
            {
                var c = compressed.Ask(question, generation, cancellation: context.Cancellation);
                compressedDecode.Add(c.Generation.DecodeTokensPerSecond);
                if (c.Recall is { } r) recall.Add(r);
                row.Add(Cell(c, fact, ref compressedCorrect));
            }
            table.AddRow([.. row]);
        }
        console.Write(table);
        console.MarkupLine(compressed != null
            ? $"correct: [bold]{compressedCorrect}/{document.Facts.Count}[/] (compressed cache), {fullCorrect}/{document.Facts.Count} (full cache)"
            : $"correct: [bold]{fullCorrect}/{document.Facts.Count}[/]");
        console.MarkupLine($"prefill: {contextIds.Length} tokens in {full.PrefillTime.TotalSeconds:F2} s ({contextIds.Length / full.PrefillTime.TotalSeconds:F0} tok/s)");
        foreach (var (k, v) in Engine.CacheReport.Rows(full.Cache, model.Config)) console.MarkupLine($"{Markup.Escape(k)}: {Markup.Escape(v)}");
        console.MarkupLine($"decode, full cache: {fullDecode.Average():F0} tok/s");
        if (compressed != null)
        {
            long before = full.Cache.ByteCount, after = compressed.Cache.ByteCount;
            console.MarkupLine($"press: [bold]{Markup.Escape(press!.Text)}[/] in {compressed.CompressTime.TotalSeconds:F2} s" + (press.Recall != null ? $", ClusterKV clustering in {compressed.RecallTime.TotalSeconds:F2} s" : ""));
            console.MarkupLine($"KV cache after compression: {after:N0} bytes ({Engine.Units.Bytes(after)}), [bold]{(double)before / Math.Max(after, 1):F2}x smaller[/] than {Engine.Units.Bytes(before)}, {compressed.Cache.StoredTokens:N0} of {full.Cache.StoredTokens:N0} (layer, head, token) entries kept");
            if (recall.Count > 0) console.MarkupLine($"ClusterKV recall: {Markup.Escape(Engine.CacheReport.Recall(recall))}");
            console.MarkupLine($"decode, compressed cache: {compressedDecode.Average():F0} tok/s");
        }
    }

    private static string Cell(ContextAnswer answer, NeedleFact fact, ref int correct)
    {
        bool ok = answer.Generation.Text.Contains(fact.Value, StringComparison.Ordinal);
        if (ok) correct++;
        return $"{(ok ? "[green]" : "[red]")}{Markup.Escape(answer.Generation.Text.Trim())}[/]";
    }
}
