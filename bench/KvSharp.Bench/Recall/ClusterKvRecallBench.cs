using System.Globalization;
using KvSharp.Compression.Recall;
using KvSharp.Evaluation.Running;
using KvSharp.Evaluation.Tasks;
using KvSharp.Generation;

namespace KvSharp.Bench.Recall;

/// <summary>
/// <c>KvSharp.Bench clusterkv-recall SHARED_DIR [KEEP,...] [SAMPLES] [CLUSTERKV_TEXT]</c>: ClusterKV on the needle model's
/// niah_single + niah_mixed samples (the eval harness's selection), question-agnostic, measuring per keep ratio the RULER
/// score and the attention recall (the share of the full softmax mass the selected tokens receive, mean over decode
/// steps × layers × query heads) and the tokens attended per step.
/// </summary>
internal static class ClusterKvRecallBench
{
    public static void Run(string[] args)
    {
        string shared = args.Length > 1 ? args[1] : "../shared";
        var keeps = (args.Length > 2 ? args[2] : "0.1,0.25").Split(',').Select(k => double.Parse(k, CultureInfo.InvariantCulture)).ToArray();
        int samples = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 4;
        string text = args.Length > 4 ? args[4] : "clusterkv";
        using var model = LanguageModel.Load(Path.Combine(shared, "models", "kvsharp-needle-16m"));
        var set = TaskCatalog.Load("needle_eval:niah_single,niah_mixed", new TaskOptions(Path.Combine(shared, "data"), model.Tokenizer, model.Config.MaxContext, samples, 2048, 42));
        var runner = new EvalRunner(model) { QuestionAware = false };
        Console.WriteLine("| clusterkv | keep | samples | RULER score | attention recall | tokens attended per step and head (mean) | context tokens (mean) |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (double keep in keeps)
        {
            var options = ClusterKvOptions.Parse(text + (text.Contains(':') ? "," : ":") + "keep=" + keep.ToString(CultureInfo.InvariantCulture));
            var compressor = new ClusterKvCompressor(options) { MeasureRecall = true };
            var outcomes = set.Select(s => runner.Run(s, compressor)).ToList();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {options.Text} | {keep} | {outcomes.Count} | {outcomes.Average(o => o.Score):F3} | {compressor.MeanRecall:F3} | {compressor.MeanSelectedTokens:F0} | {outcomes.Average(o => o.ContextTokens):F0} |"));
        }
    }
}
