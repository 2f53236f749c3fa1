using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using KvSharp.Compression.Calibration;
using KvSharp.Compression.Sharing;
using KvSharp.Generation;
using Spectre.Console;

namespace KvSharp.Cli.Commands;

/// <summary>
/// The <c>kvsharp calibrate</c> subcommands that profile a model once for an eviction or sharing press:
/// <c>kvzip-heads</c> (KVzip head-level scores), <c>baklava</c> (BaKlaVa head importances) and <c>kvsharer</c>
/// (KVSharer's layer map). Each reads calibration text (a file or a folder of .txt files), picks seeded windows of it,
/// shows a progress bar and writes a JSON file atomically.
/// </summary>
internal static class CalibrateProfileCommands
{
    public static IEnumerable<Command> Create(CliContext context)
    {
        yield return KvzipHeads(context);
        yield return Baklava(context);
        yield return KvSharer(context);
    }

    /// <summary>Options every profile calibration takes.</summary>
    private sealed class Common
    {
        public Option<string> Model { get; } = new("--model", "-m") { Description = "GGUF file or Hugging Face model folder", Required = true, HelpName = "PATH" };
        public Option<string> Text { get; } = new("--text") { Description = "Calibration text: a file, or a folder of .txt files (not the evaluation set)", Required = true, HelpName = "FILE" };
        public Option<string> Out { get; } = new("--out", "-o") { Description = "Profile file to write (JSON)", Required = true, HelpName = "FILE" };
        public Option<int> Seed { get; } = new("--seed") { Description = "Seed choosing the calibration windows (default 0)", HelpName = "S" };
        public Option<int> Windows { get; }
        public Option<int> Tokens { get; }

        public Common(int windows, int tokens)
        {
            Windows = new Option<int>("--windows") { Description = $"Calibration windows taken from the text (default {windows})", DefaultValueFactory = _ => windows, HelpName = "N" };
            Tokens = new Option<int>("--tokens") { Description = $"Tokens per window (default {tokens}, at most half the model's context)", DefaultValueFactory = _ => tokens, HelpName = "N" };
        }

        public void AddTo(Command command)
        {
            foreach (var o in new Option[] { Model, Text, Out, Seed, Windows, Tokens }) command.Options.Add(o);
        }

        /// <summary>Checks the paths and counts, loads the model and cuts the text's windows.</summary>
        public (LanguageModel Model, int[][] Windows, string TextPath) Load(ParseResult parse, CliContext context)
        {
            string path = parse.GetValue(Model)!, text = parse.GetValue(Text)!;
            if (!File.Exists(path) && !Directory.Exists(path)) throw new UsageException($"--model: '{path}' does not exist");
            if (!File.Exists(text) && !Directory.Exists(text)) throw new UsageException($"--text: '{text}' does not exist");
            int windows = parse.GetValue(Windows), tokens = parse.GetValue(Tokens);
            if (windows < 1) throw new UsageException($"--windows must be ≥ 1, got {windows}");
            if (tokens < 16) throw new UsageException($"--tokens must be ≥ 16, got {tokens}");
            var model = LanguageModel.Load(path);
            try
            {
                int length = Math.Min(tokens, model.Config.MaxContext / 2);
                var all = model.Encode(CalibrationFile.ReadText(text), addBos: false);
                int? bos = model.Tokenizer.AddsBos ? model.Tokenizer.BosId : null;
                // Each window is a sequence of its own: it starts with BOS when the model's prompts do.
                var cut = CalibrationFile.Windows(all, windows, bos != null ? length - 1 : length, parse.GetValue(Seed), minimum: 16)
                    .Select(w => bos is { } b ? [b, .. w] : w).ToArray();
                context.Error.WriteLine($"calibrating on {cut.Length} window(s) of {cut.Max(w => w.Length)} tokens from {text} ({all.Length} tokens), seed {parse.GetValue(Seed)}");
                return (model, cut, text);
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }

        /// <summary>The members every profile file records about its calibration.</summary>
        public static List<(string, string)> Provenance(ParseResult parse, Common common, string textPath, int[][] windows) =>
        [
            ("model", JsonSerializer.Serialize(Path.GetFileName(Path.TrimEndingDirectorySeparator(parse.GetValue(common.Model)!)))),
            ("text", JsonSerializer.Serialize(textPath)),
            ("windows", windows.Length.ToString(CultureInfo.InvariantCulture)),
            ("tokens_per_window", windows.Max(w => w.Length).ToString(CultureInfo.InvariantCulture)),
            ("seed", parse.GetValue(common.Seed).ToString(CultureInfo.InvariantCulture)),
        ];
    }

    private static T WithProgress<T>(CliContext context, string title, Func<IProgress<double>, T> work)
    {
        T result = default!;
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(context.Error) });
        console.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn()).Start(p =>
        {
            var task = p.AddTask(title, maxValue: 1);
            result = work(new CalibrateCommand.Progress(task, context.Cancellation));
            task.Value = 1;
        });
        return result;
    }

    private static string Num(double x) => x.ToString("0.####", CultureInfo.InvariantCulture);

    private static string Table(HeadProfile profile) =>
        string.Join('\n', Enumerable.Range(0, profile.Layers).Select(l => $"  layer {l,2}: " + string.Join(' ', Enumerable.Range(0, profile.KvHeads).Select(h => Num(profile[l, h]).PadLeft(7)))));

    private static Command KvzipHeads(CliContext context)
    {
        var common = new Common(windows: 4, tokens: 1024);
        var sinks = new Option<int>("--sinks") { Description = "Leading positions protected and left out of each head's max (default 4)", DefaultValueFactory = _ => 4, HelpName = "N" };
        var chunk = new Option<int>("--chunk") { Description = "Context tokens per repeat run (default 2000)", DefaultValueFactory = _ => 2000, HelpName = "N" };
        var command = new Command("kvzip-heads", "KVzip head level: per (layer, KV head) score = max of its context-reconstruction pair scores, averaged over windows");
        common.AddTo(command);
        command.Options.Add(sinks);
        command.Options.Add(chunk);
        command.SetAction(parse =>
        {
            int s = parse.GetValue(sinks), c = parse.GetValue(chunk);
            if (s < 0) throw new UsageException($"--sinks must be ≥ 0, got {s}");
            if (c < 1) throw new UsageException($"--chunk must be ≥ 1, got {c}");
            var (model, windows, textPath) = common.Load(parse, context);
            using var _ = model;
            var calibration = new KvzipHeadCalibration(s, c);
            var template = model.ChatTemplateText != null ? model.ChatTemplate : null;
            var profile = WithProgress(context, "KVzip reconstruction scoring", p => calibration.Run(model.Transformer, model.Tokenizer, template, windows, p));
            string outFile = parse.GetValue(common.Out)!;
            profile.Save(outFile, [.. Common.Provenance(parse, common, textPath, windows), ("sinks", s.ToString(CultureInfo.InvariantCulture)), ("chunk", c.ToString(CultureInfo.InvariantCulture))]);
            context.Output.WriteLine($"KVzip head scores ({profile.Layers} layers x {profile.KvHeads} KV heads, higher = keep):");
            context.Output.WriteLine(Table(profile));
            context.Output.WriteLine($"written to {outFile}; use it with --press kvzip:level=head,keep=0.3,file={outFile}");
            return 0;
        });
        return command;
    }

    private static Command Baklava(CliContext context)
    {
        var common = new Common(windows: 8, tokens: 512);
        var command = new Command("baklava", "BaKlaVa: per (layer, KV head) importance = mean of 1 - cos(value of the query's token, head output)");
        common.AddTo(command);
        command.SetAction(parse =>
        {
            var (model, windows, textPath) = common.Load(parse, context);
            using var _ = model;
            var profile = WithProgress(context, "BaKlaVa head profiling", p => BaklavaProfiler.Run(model.Transformer, windows, p));
            string outFile = parse.GetValue(common.Out)!;
            profile.Save(outFile, Common.Provenance(parse, common, textPath, windows));
            context.Output.WriteLine($"BaKlaVa head importances ({profile.Layers} layers x {profile.KvHeads} KV heads, 1 - cos(input, output)):");
            context.Output.WriteLine(Table(profile));
            context.Output.WriteLine($"written to {outFile}; use it with --press \"baklava(snapkv):keep=0.3,file={outFile}\"");
            return 0;
        });
        return command;
    }

    private static Command KvSharer(CliContext context)
    {
        var common = new Common(windows: 4, tokens: 256);
        var layers = new Option<int>("--layers") { Description = "Most layers that may share another's cache", Required = true, HelpName = "N" };
        var threshold = new Option<double>("--threshold") { Description = "Least mean cosine similarity of the last hidden states (final-norm output, per calibration token) to the unshared model's (default 0.9)", DefaultValueFactory = _ => 0.9, HelpName = "C" };
        var command = new Command("kvsharer", "KVSharer: greedy layer map, most dissimilar averaged caches first, each share kept only while the output stays similar");
        common.AddTo(command);
        command.Options.Add(layers);
        command.Options.Add(threshold);
        command.SetAction(parse =>
        {
            int n = parse.GetValue(layers);
            double c = parse.GetValue(threshold);
            if (n < 1) throw new UsageException($"--layers must be ≥ 1, got {n}");
            if (!(c >= -1 && c <= 1)) throw new UsageException($"--threshold must be in [-1, 1], got {c}");
            var (model, windows, textPath) = common.Load(parse, context);
            using var _ = model;
            if (n >= model.Config.NumLayers) throw new UsageException($"--layers {n}: the model has {model.Config.NumLayers} layers, at most {model.Config.NumLayers - 1} can share");
            var result = WithProgress(context, "KVSharer greedy search", p =>
            {
                var calibration = new KvSharerCalibration(model.Transformer, windows);
                return calibration.Search(c, n, p);
            });
            var map = new KvSharerMap(model.Config.NumLayers, result.Shares);
            string outFile = parse.GetValue(common.Out)!;
            string R(double x) => x.ToString("R", CultureInfo.InvariantCulture);
            var trials = "[\n    " + string.Join(",\n    ", result.Trials.Select(t =>
                $"{{\"layer\": {t.Share.Layer}, \"source\": {t.Share.Source}, \"distance\": {R(t.Distance)}, \"similarity\": {R(t.Similarity)}, \"accepted\": {(t.Accepted ? "true" : "false")}}}")) + "\n  ]";
            map.Save(outFile, [.. Common.Provenance(parse, common, textPath, windows), ("threshold", R(c)), ("max_layers", n.ToString(CultureInfo.InvariantCulture)), ("trials", trials)]);
            foreach (var t in result.Trials)
                context.Output.WriteLine($"  layer {t.Share.Layer} <- {t.Share.Source}: distance {Num(t.Distance)}, similarity {Num(t.Similarity)} {(t.Accepted ? "kept" : "rejected")}");
            context.Output.WriteLine($"{map.Shares.Count} shared layer(s): {(map.Shares.Count == 0 ? "none" : string.Join(", ", map.Shares))}; written to {outFile}; use it with --press kvsharer:file={outFile}");
            return 0;
        });
        return command;
    }
}
