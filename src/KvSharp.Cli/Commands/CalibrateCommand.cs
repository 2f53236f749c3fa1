using System.CommandLine;
using System.Globalization;
using System.Text;
using KvSharp.Compression.Quantization;
using KvSharp.Generation;
using Spectre.Console;

namespace KvSharp.Cli.Commands;

/// <summary>
/// <c>kvsharp calibrate kvtuner</c>: KVTuner's offline search. Profiles each layer's sensitivity to each (key bits,
/// value bits) pair on calibration text (<see cref="KvTunerProfiler"/>), prunes, clusters and searches
/// (<see cref="KvTunerSearch"/>) under a mean-bits budget, measures the chosen configuration's real loss, and writes
/// the configuration (read by <c>kvtuner:file=...</c>) with the Pareto front, atomically.
/// </summary>
internal static class CalibrateCommand
{
    public static Command Create(CliContext context)
    {
        var command = new Command("calibrate", "Offline calibration: KVTuner precisions, KVzip head scores, BaKlaVa head profiles, KVSharer layer maps");
        command.Subcommands.Add(KvTuner(context));
        foreach (var sub in CalibrateProfileCommands.Create(context)) command.Subcommands.Add(sub);
        return command;
    }

    private static Command KvTuner(CliContext context)
    {
        var model = new Option<string>("--model", "-m") { Description = "GGUF file or Hugging Face model folder", Required = true, HelpName = "PATH" };
        var text = new Option<string>("--text") { Description = "Calibration text file", Required = true, HelpName = "FILE" };
        var budget = new Option<double>("--budget") { Description = "Largest mean bits per KV element (e.g. 4 or 3.25)", Required = true, HelpName = "BITS" };
        var output = new Option<string>("--out", "-o") { Description = "Configuration file to write (JSON)", Required = true, HelpName = "FILE" };
        var seed = new Option<int>("--seed") { Description = "Search seed (default 0)", HelpName = "S" };
        var groups = new Option<int>("--groups") { Description = "Layer groups (one decision each; default 4)", DefaultValueFactory = _ => 4, HelpName = "N" };
        var tokens = new Option<int>("--tokens") { Description = "Calibration tokens used (default 256: the first half prefilled and quantized, the second half scored)", DefaultValueFactory = _ => 256, HelpName = "N" };
        var generations = new Option<int>("--generations") { Description = "NSGA-II generations (default 200)", DefaultValueFactory = _ => 200, HelpName = "N" };

        var command = new Command("kvtuner", "KVTuner: search per-layer (key bits, value bits) pairs under a mean-bits budget");
        foreach (var o in new Option[] { model, text, budget, output, seed, groups, tokens, generations }) command.Options.Add(o);
        command.SetAction(parse =>
        {
            string path = parse.GetValue(model)!, textFile = parse.GetValue(text)!, outFile = parse.GetValue(output)!;
            if (!File.Exists(path) && !Directory.Exists(path)) throw new UsageException($"--model: '{path}' does not exist");
            if (!File.Exists(textFile)) throw new UsageException($"--text: '{textFile}' does not exist");
            int n = parse.GetValue(tokens);
            if (n < 8) throw new UsageException($"--tokens must be ≥ 8, got {n}");
            double least = KvTunerPair.Candidates.Min(p => p.MeanBits);
            if (!(parse.GetValue(budget) >= least)) throw new UsageException($"--budget {parse.GetValue(budget)} is below the smallest pair's {least} mean bits");
            var options = new KvTunerSearchOptions
            {
                Budget = parse.GetValue(budget),
                Groups = parse.GetValue(groups),
                Generations = parse.GetValue(generations),
                Seed = parse.GetValue(seed),
            };
            return Run(context, path, textFile, n, options, outFile);
        });
        return command;
    }

    private static int Run(CliContext context, string modelPath, string textFile, int tokenCount, KvTunerSearchOptions options, string outFile)
    {
        using var model = LanguageModel.Load(modelPath);
        var all = model.Encode(File.ReadAllText(textFile));
        var tokens = all.Take(Math.Min(tokenCount, Math.Min(all.Length, model.Config.MaxContext))).ToArray();
        using var profiler = new KvTunerProfiler(model.Transformer, tokens, tokens.Length / 2);
        context.Error.WriteLine($"calibrating on {tokens.Length} tokens of {textFile}: {profiler.ContextTokens} quantized, {profiler.ScoredTokens} scored; {profiler.Layers} layers x {KvTunerPair.Candidates.Count} pairs");
        double[][] sensitivity = [];
        KvTunerSearchResult? result = null;
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(context.Error) });
        console.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn()).Start(p =>
        {
            var profile = p.AddTask("sensitivity profiling", maxValue: 1);
            sensitivity = profiler.Sensitivity(new Progress(profile, context.Cancellation));
            profile.Value = 1;
            var search = p.AddTask("NSGA-II search", maxValue: 1);
            result = KvTunerSearch.Run(sensitivity, options, new Progress(search, context.Cancellation));
            search.Value = 1;
        });
        double measured = profiler.Loss(result!.Chosen.Layers.Select(x => (KvTunerPair?)x).ToArray());
        WriteAtomically(outFile, Json(new KvTunerConfig(result.Chosen.Layers), result, sensitivity, options, measured));
        context.Output.WriteLine($"chosen: {string.Join(' ', result.Chosen.Layers)}  mean bits {result.Chosen.MeanBits.ToString("0.###", CultureInfo.InvariantCulture)}  predicted KL {Num(result.Chosen.Loss)}  measured KL {Num(measured)}");
        context.Output.WriteLine($"Pareto front: {result.Front.Count} configurations; written to {outFile}");
        return 0;
    }

    /// <summary>Reports a calibration's fraction done to a progress bar; Ctrl+C cancels there.</summary>
    internal sealed class Progress(ProgressTask task, CancellationToken cancellation) : IProgress<double>
    {
        public void Report(double value)
        {
            cancellation.ThrowIfCancellationRequested();
            task.Value = value;
        }
    }

    private static string Num(double x) => x.ToString("0.######", CultureInfo.InvariantCulture);

    private static string Json(KvTunerConfig chosen, KvTunerSearchResult result, double[][] sensitivity, KvTunerSearchOptions options, double measured)
    {
        string R(double x) => x.ToString("R", CultureInfo.InvariantCulture);
        string Pairs(IEnumerable<KvTunerPair> p) => "[" + string.Join(", ", p.Select(x => $"\"{x}\"")) + "]";
        var sb = new StringBuilder();
        sb.Append("{\n  \"layers\": ").Append(Pairs(chosen.Layers)).Append(",\n");
        sb.Append("  \"mean_bits\": ").Append(R(chosen.MeanBits)).Append(",\n");
        sb.Append("  \"predicted_loss\": ").Append(R(result.Chosen.Loss)).Append(",\n");
        sb.Append("  \"measured_loss\": ").Append(R(measured)).Append(",\n");
        sb.Append("  \"budget\": ").Append(R(options.Budget)).Append(", \"seed\": ").Append(options.Seed).Append(",\n");
        sb.Append("  \"groups\": [").AppendJoin(", ", result.Groups.Select(g => "[" + string.Join(", ", g) + "]")).Append("],\n");
        sb.Append("  \"group_candidates\": [").AppendJoin(", ", result.GroupCandidates.Select(Pairs)).Append("],\n");
        sb.Append("  \"sensitivity\": {\"pairs\": ").Append(Pairs(KvTunerPair.Candidates)).Append(", \"kl\": [")
          .AppendJoin(", ", sensitivity.Select(s => "[" + string.Join(", ", s.Select(R)) + "]")).Append("]},\n");
        sb.Append("  \"pareto_front\": [\n").AppendJoin(",\n", result.Front.Select(f => $"    {{\"layers\": {Pairs(f.Layers)}, \"mean_bits\": {R(f.MeanBits)}, \"predicted_loss\": {R(f.Loss)}}}")).Append("\n  ]\n}\n");
        return sb.ToString();
    }

    private static void WriteAtomically(string path, string content)
    {
        string full = Path.GetFullPath(path);
        string temp = full + ".tmp";
        File.WriteAllText(temp, content);
        File.Move(temp, full, overwrite: true);
    }
}
