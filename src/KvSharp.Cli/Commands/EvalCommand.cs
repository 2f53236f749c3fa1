using System.CommandLine;
using System.Globalization;
using KvSharp.Evaluation.Reports;
using KvSharp.Evaluation.Running;
using KvSharp.Generation;
using Spectre.Console;

namespace KvSharp.Cli.Commands;

/// <summary>
/// <c>kvsharp eval</c>: runs tasks on a model with presses at keep ratios (or a sweep config), appending one result
/// line per finished cell to <c>--out</c>; a rerun skips the cells already there. Prints the results table at the end.
/// </summary>
internal static class EvalCommand
{
    /// <summary>The compressors the command runs: the full cache and every registered press.</summary>
    private static readonly ICompressorFactory Compressors = new PressCompressorFactory();

    public static Command Create(CliContext context)
    {
        var model = new Option<string?>("--model", "-m") { Description = "Model (GGUF file or Hugging Face folder; default: the embedded kvsharp-needle-16m)", HelpName = "PATH" };
        var task = new Option<string[]>("--task") { Description = "Task spec, repeatable: needle_eval[:niah_single,niah_mixed,kv,vt], ruler:NAME (niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe, ...), ruler-file:PATH, leval:NAME, shared:N, shared-turns:N, lm:tinystories", HelpName = "SPEC" };
        var samples = new Option<int>("--samples", "-n") { Description = "Samples per task (per sub-task for needle_eval)", DefaultValueFactory = _ => 20 }.Int();
        var length = new Option<int>("--length") { Description = "Token length of generated tasks", DefaultValueFactory = _ => 2048 }.Int();
        var seed = new Option<int>("--seed") { Description = "Seed of generated tasks", DefaultValueFactory = _ => 42 }.Int();
        var press = new Option<string[]>("--press") { Description = "Press, repeatable: none (the full cache) or a registered press (snapkv, kvzip, snapkv+pyramid, adakv(snapkv), ...); it takes the --keep ratios", HelpName = "PRESS" };
        var keep = new Option<string>("--keep") { Description = "Keep ratios, comma-separated, each in (0, 1]", DefaultValueFactory = _ => "0.1,0.25,0.5,0.75,1.0", HelpName = "R,R,..." };
        var kvCache = new Option<string>("--kv-cache") { Description = "KV cache block formats (FORMAT or KEYS:VALUES, +rN residual)", DefaultValueFactory = _ => "f32", HelpName = "SPEC" };
        var config = new Option<string?>("--config") { Description = "Sweep config (JSON, or YAML for .yaml/.yml: models, tasks, presses, keep, samples, length, seed, kv_cache); replaces the options above", HelpName = "FILE" };
        var output = new Option<string>("--out", "-o") { Description = "Results file (JSON lines, appended; per-sample answers go to NAME.samples.jsonl)", DefaultValueFactory = _ => "results.jsonl", HelpName = "FILE" };
        var data = new Option<string?>("--data") { Description = "Shared data folder (default: $KVSHARP_DATA, else shared/data found above the current folder)", HelpName = "DIR" };
        var agnostic = new Option<bool>("--question-agnostic") { Description = "Compress without showing the press the question (default: a single question is shown)" };
        var threads = new Option<int?>("--threads", "-t") { Description = "CPU threads (default: all cores)", HelpName = "N" }.Int();

        var command = new Command("eval", "Measure task scores, KV bytes and times of presses at keep ratios; results are appended as each cell finishes");
        foreach (var o in new Option[] { model, task, samples, length, seed, press, keep, kvCache, config, output, data, agnostic, threads }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            if (parse.GetValue(threads) is { } t)
            {
                if (t <= 0) throw new UsageException($"--threads must be > 0, got {t}");
                KvSharp.Compute.Cpu.CpuThreads.Count = t;
            }
            SweepConfig sweep;
            if (parse.GetValue(config) is { } configPath)
            {
                foreach (var o in new Option[] { model, task, press, keep, samples, length, seed, kvCache, agnostic })
                    if (parse.GetResult(o) is { Implicit: false }) throw new UsageException($"--config replaces {o.Name}: give one or the other");
                sweep = SweepConfig.Load(configPath);
            }
            else
            {
                var tasks = parse.GetValue(task) ?? [];
                if (tasks.Length == 0) throw new UsageException("--task is required (e.g. --task needle_eval:niah_single), or give --config");
                string? m = parse.GetValue(model);
                if (m != null && !File.Exists(m) && !Directory.Exists(m)) throw new UsageException($"--model: '{m}' does not exist");
                var presses = parse.GetValue(press) is { Length: > 0 } p ? p : ["none"];
                sweep = new SweepConfig
                {
                    Models = [m ?? "embedded"],
                    Tasks = tasks,
                    Presses = presses,
                    Keep = ParseKeep(parse.GetValue(keep)!),
                    Samples = parse.GetValue(samples),
                    Length = parse.GetValue(length),
                    Seed = parse.GetValue(seed),
                    KvCache = ModelOptions.ParseKvCache(parse.GetValue(kvCache))!.ToString(),
                    QuestionAware = !parse.GetValue(agnostic),
                };
                try { sweep.Validate(); }
                catch (KvSharpException e) { throw new UsageException(e.Message); }
            }
            string dataDir = DataFolder.Resolve(parse.GetValue(data));
            string outPath = parse.GetValue(output)!;
            var runner = new SweepRunner(sweep, Compressors, LoadModel, dataDir);
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(context.Output) });
            IReadOnlyList<CellResult> cells;
            if (console.Profile.Capabilities.Interactive)
            {
                cells = [];
                console.Progress()
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
                    .Start(ctx => cells = runner.Run(outPath, new ProgressBars(ctx, runner.Cells().Count), context.Cancellation));
            }
            else
            {
                cells = runner.Run(outPath, new ProgressLines(context.Error), context.Cancellation);
            }
            context.Output.Write(ResultsTable.Markdown(cells));
            context.Output.WriteLine($"results: {outPath}");
            return 0;
        });
        return command;
    }

    /// <summary>Opens a model of a sweep; <c>embedded</c> is the model shipped beside the command.</summary>
    public static LanguageModel LoadModel(string path)
    {
        string resolved = path == "embedded" ? DemoCommand.EmbeddedModel : path;
        if (!File.Exists(resolved) && !Directory.Exists(resolved)) throw new KvSharpException($"{resolved}: model not found");
        return LanguageModel.Load(resolved);
    }

    internal static double[] ParseKeep(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new UsageException("--keep: give at least one ratio");
        return parts.Select(p => double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture, out var r) && r > 0 && r <= 1
            ? r
            : throw new UsageException($"--keep: '{p}' is not a ratio in (0, 1]")).ToArray();
    }

    /// <summary>One progress bar per cell plus one over all cells, with elapsed and remaining time.</summary>
    private sealed class ProgressBars(ProgressContext context, int cells) : ISweepProgress
    {
        private readonly ProgressTask _all = context.AddTask("all cells", maxValue: cells);
        private ProgressTask? _cell;

        public void CellStarted(CellResult cell, int samples) =>
            _cell = context.AddTask(Markup.Escape($"{cell.Task} · {cell.Compressor}"), maxValue: samples);

        public void SampleFinished(CellResult cell, SampleOutcome outcome) => _cell?.Increment(1);

        public void CellFinished(CellResult cell, bool skipped)
        {
            _all.Increment(1);
            _cell?.StopTask();
            _cell = null;
        }
    }

    /// <summary>Without a terminal: one line per finished cell (with the time left estimated from the cells so far).</summary>
    private sealed class ProgressLines(TextWriter error) : ISweepProgress
    {
        private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
        private int _ran;

        public void CellStarted(CellResult cell, int samples) { }

        public void SampleFinished(CellResult cell, SampleOutcome outcome) { }

        public void CellFinished(CellResult cell, bool skipped)
        {
            if (!skipped) _ran++;
            string pace = skipped ? "" : FormattableString.Invariant($" ({_clock.Elapsed.TotalSeconds / _ran:0.0} s per cell so far)");
            error.WriteLine(FormattableString.Invariant(
                $"{(skipped ? "skipped (done)" : "done")}: {cell.Model} {cell.Task} {cell.Compressor}: score {cell.Score:0.000} over {cell.Samples} samples{pace}"));
        }
    }
}
