using System.Globalization;
using System.Text.Json;
using KvSharp.Cache;
using KvSharp.Evaluation.Tasks;
using KvSharp.Generation;

namespace KvSharp.Evaluation.Running;

/// <summary>Progress of a sweep, for a progress display.</summary>
public interface ISweepProgress
{
    /// <summary>A cell starts: <paramref name="samples"/> samples to run.</summary>
    void CellStarted(CellResult cell, int samples);

    /// <summary>One sample of the current cell finished.</summary>
    void SampleFinished(CellResult cell, SampleOutcome outcome);

    /// <summary>A cell finished (<paramref name="skipped"/>: it was already in the results file).</summary>
    void CellFinished(CellResult cell, bool skipped);
}

/// <summary>
/// Runs a <see cref="SweepConfig"/>: every model × task × press × keep ratio, appending each finished cell to the
/// results file (and its per-sample answers to the samples file beside it); cells already in the file are skipped,
/// so an interrupted sweep resumes.
/// </summary>
public sealed class SweepRunner
{
    private readonly SweepConfig _config;
    private readonly ICompressorFactory _compressors;
    private readonly Func<string, LanguageModel> _loadModel;
    private readonly string _dataDir;

    /// <summary>
    /// A runner of <paramref name="config"/>. <paramref name="loadModel"/> opens a model path of the config (the CLI
    /// resolves <c>embedded</c>); <paramref name="dataDir"/> is the shared data folder.
    /// </summary>
    public SweepRunner(SweepConfig config, ICompressorFactory compressors, Func<string, LanguageModel> loadModel, string dataDir)
    {
        config.Validate();
        _config = config;
        _compressors = compressors;
        _loadModel = loadModel;
        _dataDir = dataDir;
    }

    /// <summary>The per-sample answers file of a results file (<c>x.jsonl</c> → <c>x.samples.jsonl</c>).</summary>
    public static string SamplesPath(string resultsPath) =>
        Path.Combine(Path.GetDirectoryName(Path.GetFullPath(resultsPath))!, Path.GetFileNameWithoutExtension(resultsPath) + ".samples.jsonl");

    /// <summary>The cells of the config, in run order, with their identity fields set.</summary>
    public IReadOnlyList<CellResult> Cells() => _config.Models.SelectMany(CellsOf).ToList();

    private List<CellResult> CellsOf(string model)
    {
        var spec = KvCacheSpec.Parse(_config.KvCache);
        var cells = new List<CellResult>();
        foreach (var task in _config.Tasks)
            foreach (var press in _config.Presses)
            {
                // The full cache, quantizers and dynamic budgets do not take the ratio: one cell.
                var ratios = _compressors.TakesKeepRatio(press) ? _config.Keep : [1.0];
                foreach (var keep in ratios)
                {
                    var compressor = _compressors.Create(press, keep);
                    var identity = new CellResult
                    {
                        Key = "",
                        Model = ModelName(model),
                        Task = task,
                        Length = _config.Length,
                        Seed = _config.Seed,
                        Samples = _config.Samples,
                        Press = press,
                        KeepRatio = keep,
                        Compressor = compressor.Name,
                        KvCache = spec.ToString(),
                    };
                    cells.Add(identity with { Key = KeyOf(identity, _config.QuestionAware) });
                }
            }
        return cells;
    }

    /// <summary>
    /// Runs every cell not yet in <paramref name="resultsPath"/>; returns all cells of the config found or produced,
    /// in run order.
    /// </summary>
    public IReadOnlyList<CellResult> Run(string resultsPath, ISweepProgress? progress = null, CancellationToken cancellation = default)
    {
        var done = ResultsFile.Resume(resultsPath).ToDictionary(c => c.Key);
        var results = new List<CellResult>();
        foreach (var modelPath in _config.Models)
        {
            LanguageModel? model = null;
            try
            {
                foreach (var taskCells in CellsOf(modelPath).GroupBy(c => c.Task))
                {
                    IReadOnlyList<EvalSample>? samples = null;
                    using var prefills = new PrefillStore(); // the task's cells share each sample's prefill
                    foreach (var cell in taskCells)
                    {
                        if (done.TryGetValue(cell.Key, out var existing))
                        {
                            results.Add(existing);
                            progress?.CellFinished(existing, skipped: true);
                            continue;
                        }
                        model ??= _loadModel(modelPath);
                        samples ??= TaskCatalog.Load(cell.Task, new TaskOptions(_dataDir, model.Tokenizer, model.Config.MaxContext, _config.Samples, _config.Length, _config.Seed));
                        var result = RunCell(model, cell, samples, prefills, resultsPath, progress, cancellation);
                        ResultsFile.Append(resultsPath, result);
                        results.Add(result);
                        progress?.CellFinished(result, skipped: false);
                    }
                }
            }
            finally
            {
                model?.Dispose();
            }
        }
        return results;
    }

    private CellResult RunCell(LanguageModel model, CellResult cell, IReadOnlyList<EvalSample> samples, PrefillStore prefills, string resultsPath, ISweepProgress? progress, CancellationToken cancellation)
    {
        var runner = new EvalRunner(model, KvCacheSpec.Parse(_config.KvCache)) { QuestionAware = _config.QuestionAware, Prefills = prefills };
        var compressor = _compressors.Create(cell.Press, cell.KeepRatio);
        progress?.CellStarted(cell, samples.Count);
        var memory = CellMemoryMeter.Start();
        var outcomes = new List<SampleOutcome>();
        var lines = new List<string>();
        foreach (var sample in samples)
        {
            cancellation.ThrowIfCancellationRequested();
            var outcome = runner.Run(sample, compressor, cancellation);
            outcomes.Add(outcome);
            lines.Add(JsonSerializer.Serialize(new { cell = cell.Key, outcome }, JsonlFile.Options));
            progress?.SampleFinished(cell, outcome);
        }
        var used = memory.Stop();
        // The samples are written with their cell, after it: a cell's answers are in the file exactly when the cell is.
        foreach (var line in lines) JsonlFile.Append(SamplesPath(resultsPath), line);
        var summary = CellResult.Summarize(cell, outcomes, DateTime.UtcNow);
        // A press with its own budget keeps what it decides: report that share of the bytes as its ratio.
        bool achieved = !_compressors.IsFullCache(cell.Press) && !_compressors.TakesKeepRatio(cell.Press) && summary.KvBytesBefore > 0;
        return summary with
        {
            KeepRatio = achieved ? summary.KvBytesAfter / summary.KvBytesBefore : summary.KeepRatio,
            KeepAchieved = achieved,
            PeakRssBytes = used.PeakRssBytes,
            PeakRssDeltaBytes = used.PeakRssDeltaBytes,
            PeakRssPerCell = used.PerCell,
        };
    }

    /// <summary>The name a model path is reported under: its folder or file name.</summary>
    public static string ModelName(string path) =>
        path == "embedded" ? "kvsharp-needle-16m" : Path.GetFileName(Path.TrimEndingDirectorySeparator(path));

    private static string KeyOf(CellResult c, bool questionAware) => string.Join('|',
        c.Model, c.Task, c.Length.ToString(CultureInfo.InvariantCulture), c.Seed.ToString(CultureInfo.InvariantCulture),
        c.Samples.ToString(CultureInfo.InvariantCulture), c.Compressor, c.KvCache, questionAware ? "qa" : "qn");
}
