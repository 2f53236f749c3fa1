using System.CommandLine;
using System.Diagnostics;
using KvSharp.Cli.Engine;
using KvSharp.Evaluation.Tasks;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;
using Spectre.Console;

namespace KvSharp.Cli.Commands;

/// <summary>
/// <c>kvsharp demo</c>: the main job on the embedded model. Builds a long document with hidden facts,
/// prefills it once, asks one question per fact over the same KV cache (each question and answer
/// rolled back afterwards) and shows answers, KV bytes and speed.
/// </summary>
internal static class DemoCommand
{
    /// <summary>Where the build copies the embedded model (see KvSharp.Cli.csproj).</summary>
    public static string EmbeddedModel => Path.Combine(AppContext.BaseDirectory, "models", "kvsharp-needle-16m");

    public static Command Create(CliContext context)
    {
        var model = new Option<string?>("--model", "-m") { Description = "Model to run (default: the embedded kvsharp-needle-16m)", HelpName = "PATH" };
        var sentences = new Option<int>("--sentences") { Description = "Haystack sentences (~6 tokens each)", DefaultValueFactory = _ => 500 }.Int();
        var facts = new Option<int>("--facts") { Description = "Facts hidden in the document (one question each)", DefaultValueFactory = _ => 4 }.Int();
        var seed = new Option<int>("--seed") { Description = "Seed of the document's random facts", DefaultValueFactory = _ => 1 }.Int();
        var threads = new Option<int?>("--threads", "-t") { Description = "CPU threads (default: all cores)", HelpName = "N" }.Int();
        var kvCache = new Option<string?>("--kv-cache") { Description = "KV cache block formats (FORMAT or KEYS:VALUES, e.g. f16, int4:int2); default float32", HelpName = "SPEC" };

        var command = new Command("demo", "Hide facts in a long document, prefill it once, and ask for each fact over the same KV cache");
        command.Options.Add(model);
        command.Options.Add(sentences);
        command.Options.Add(facts);
        command.Options.Add(seed);
        command.Options.Add(threads);
        command.Options.Add(kvCache);
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
            string path = parse.GetValue(model) ?? EmbeddedModel;
            if (!File.Exists(path) && !Directory.Exists(path)) throw new KvSharpException($"{path}: model not found");
            Run(path, NeedleDocument.Create(n, f, parse.GetValue(seed)), ModelOptions.ParseKvCache(parse.GetValue(kvCache)), context);
            return 0;
        });
        return command;
    }

    private static void Run(string path, NeedleDocument document, KvSharp.Cache.KvCacheSpec? spec, CliContext context)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(context.Output) });
        using var model = LanguageModel.Load(path);
        var contextIds = model.Encode(document.Context);
        int ctx = model.Config.MaxContext;
        using var cache = model.CreateCache(ctx, spec);
        console.MarkupLine($"[bold]{Markup.Escape(Path.GetFileName(Path.TrimEndingDirectorySeparator(path)))}[/]: document of {contextIds.Length} tokens with {document.Facts.Count} hidden facts");

        var sw = Stopwatch.StartNew();
        model.Transformer.Forward(contextIds, cache);
        var prefill = sw.Elapsed;
        int contextLength = cache.Length;

        var generator = model.CreateGenerator();
        var options = new GenerationOptions { MaxTokens = 16, Sampler = SamplerOptions.Greedy, StopStrings = ["\n"] };
        var table = new Table().AddColumn("question: the magic number for").AddColumn("expected").AddColumn("answer").AddColumn("decode tok/s");
        int correct = 0;
        foreach (var fact in document.Facts)
        {
            var question = model.Encode(NeedleDocument.Question(fact), addBos: false);
            var result = generator.Generate(question, cache, ctx, options, cancellation: context.Cancellation);
            cache.Truncate(contextLength); // roll the question and its answer back: the next one sees only the document
            bool ok = result.Text.Contains(fact.Value, StringComparison.Ordinal);
            if (ok) correct++;
            table.AddRow(fact.Key, fact.Value, $"{(ok ? "[green]" : "[red]")}{Markup.Escape(result.Text.Trim())}[/]", $"{result.DecodeTokensPerSecond:F0}");
        }
        console.Write(table);
        console.MarkupLine($"correct: [bold]{correct}/{document.Facts.Count}[/]");
        console.MarkupLine($"prefill: {contextIds.Length} tokens in {prefill.TotalSeconds:F2} s ({contextIds.Length / prefill.TotalSeconds:F0} tok/s)");
        foreach (var (k, v) in CacheReport.Rows(cache, model.Config)) console.MarkupLine($"{Markup.Escape(k)}: {Markup.Escape(v)}");
    }
}
