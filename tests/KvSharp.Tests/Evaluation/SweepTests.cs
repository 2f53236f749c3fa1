using KvSharp.Evaluation.Running;
using KvSharp.Generation;

namespace KvSharp.Tests.Evaluation;

/// <summary>
/// A small end-to-end sweep on stories260K (continuations of the TinyStories excerpt): cells for the full cache and a
/// registered press (StreamingLLM) at two ratios, appended to the results file, skipped on a rerun, and reported as a table and plots.
/// </summary>
public sealed class SweepTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    private static SweepConfig Config => new()
    {
        Models = [Stories],
        Tasks = ["lm:tinystories"],
        Presses = ["none", "streamingllm"],
        Keep = [0.25, 0.5],
        Samples = 2,
        Length = 256,
    };

    [Fact]
    public void Sweep_RunsEveryCellAndResumes()
    {
        using var dir = new TempDir();
        string results = dir.File("results.jsonl");
        int loads = 0;
        LanguageModel Load(string path) { loads++; return LanguageModel.Load(path); }
        var runner = new SweepRunner(Config, new PressCompressorFactory(), Load, RepoPaths.SharedFile("data"));

        var cells = runner.Run(results);
        Assert.Equal(["none", "streamingllm", "streamingllm"], cells.Select(c => c.Press));
        Assert.Equal([1, 0.25, 0.5], cells.Select(c => c.KeepRatio));
        Assert.All(cells.Skip(1), c => Assert.Contains("keep=0.", c.Compressor, StringComparison.Ordinal)); // the registry's text form, ratio included
        var full = cells[0];
        Assert.Equal(0, full.Kl!.Value, 9);         // the full cache against itself
        Assert.Equal(1, full.Top1Agreement!.Value);
        Assert.Equal(full.Perplexity!.Value, full.ReferencePerplexity!.Value, 9);
        Assert.InRange(full.Perplexity.Value, 1.5, 30); // a trained model on its own domain
        Assert.Equal(full.KvBytesBefore, full.KvBytesAfter);
        foreach (var pressed in cells.Skip(1))
        {
            Assert.True(pressed.KvBytesAfter < pressed.KvBytesBefore * (pressed.KeepRatio + 0.2), $"{pressed.Compressor}: {pressed.KvBytesAfter} of {pressed.KvBytesBefore} bytes");
            Assert.True(pressed.Kl > 0);
            Assert.Equal(full.ReferencePerplexity.Value, pressed.ReferencePerplexity!.Value, 9);
        }
        Assert.True(cells[1].KvBytesAfter < cells[2].KvBytesAfter, "keeping less must store less");
        foreach (var c in cells)
        {
            // The cache's high-water mark includes the continuation run over the compressed cache.
            Assert.InRange(c.PeakKvBytes, (long)c.KvBytesAfter, long.MaxValue);
            Assert.True(c.PeakRssBytes > 0 && c.PeakRssDeltaBytes >= 0 && c.PeakRssDeltaBytes <= c.PeakRssBytes);
            Assert.Equal(OperatingSystem.IsLinux(), c.PeakRssPerCell);
        }
        Assert.Equal(1, loads);
        Assert.Equal(3, ResultsFile.Read(results).Count);
        Assert.Equal(6, File.ReadAllLines(SweepRunner.SamplesPath(results)).Length); // 2 samples x 3 cells

        // A rerun finds every cell done: nothing is loaded, run or appended.
        string before = File.ReadAllText(results);
        var again = new SweepRunner(Config, new PressCompressorFactory(), Load, RepoPaths.SharedFile("data")).Run(results);
        Assert.Equal(1, loads);
        Assert.Equal(before, File.ReadAllText(results));
        Assert.Equal(cells.Select(c => c.Key), again.Select(c => c.Key));
    }

    [Fact]
    public void Resume_DropsATornLastLineAndRerunsOnlyThatCell()
    {
        using var dir = new TempDir();
        string results = dir.File("results.jsonl");
        var config = Config with { Presses = ["none"], Samples = 1 };
        new SweepRunner(config, new PressCompressorFactory(), LanguageModel.Load, RepoPaths.SharedFile("data")).Run(results);
        File.AppendAllText(results, "{\"key\":\"torn"); // a run killed mid-append
        var cells = new SweepRunner(config with { Keep = [0.5], Presses = ["none", "streamingllm"] }, new PressCompressorFactory(), LanguageModel.Load, RepoPaths.SharedFile("data")).Run(results);
        Assert.Equal(2, cells.Count);
        var lines = File.ReadAllLines(results);
        Assert.Equal(2, lines.Length);
        Assert.DoesNotContain(lines, l => l.Contains("torn", StringComparison.Ordinal));
    }

    [Fact]
    public void SweepConfig_RejectsBadValuesNamingThem()
    {
        using var dir = new TempDir();
        string path = dir.File("sweep.json");
        File.WriteAllText(path, "{\"tasks\": [\"lm:tinystories\"], \"keep\": [0, 0.5]}");
        Assert.Contains("'keep'", Assert.Throws<KvSharpException>(() => SweepConfig.Load(path)).Message, StringComparison.Ordinal);
        File.WriteAllText(path, "{\"tasks\": [\"lm:tinystories\"], \"kepp\": [0.5]}");
        Assert.Contains("kepp", Assert.Throws<KvSharpException>(() => SweepConfig.Load(path)).Message, StringComparison.Ordinal);
        File.WriteAllText(path, "{\"tasks\": [\"lm:tinystories\"], \"presses\": [\"none\"], \"keep\": [0.1, 0.5], \"samples\": 3}");
        var config = SweepConfig.Load(path);
        Assert.Equal([0.1, 0.5], config.Keep);
        Assert.Equal(3, config.Samples);
    }

    [Fact]
    public void SharedPrefills_GiveTheResultsOfFreshPrefills()
    {
        using var model = LanguageModel.Load(Stories);
        var samples = KvSharp.Evaluation.Tasks.TaskCatalog.Load("lm:tinystories", new(RepoPaths.SharedFile("data"), model.Tokenizer, model.Config.MaxContext, 2, 256, 42));
        var press = new PressCompressorFactory().Create("snapkv", 0.5);
        using var store = new PrefillStore();
        var shared = new EvalRunner(model) { Prefills = store };
        var fresh = new EvalRunner(model);
        foreach (var sample in samples)
        {
            var expected = fresh.Run(sample, press);
            var first = shared.Run(sample, press);         // prefills and stores
            var again = shared.Run(sample, press);         // compresses a fork of the stored prefill
            var full = shared.Run(sample, NoCompression.Instance);
            foreach (var o in new[] { first, again })
            {
                Assert.Equal(expected.Quality!.MeanKl, o.Quality!.MeanKl, 12);
                Assert.Equal(expected.Quality.Perplexity, o.Quality.Perplexity, 12);
                Assert.Equal(expected.KvBytesAfter, o.KvBytesAfter);
            }
            Assert.Equal(first.PrefillSeconds, again.PrefillSeconds); // the one measured prefill
            Assert.Equal(0, full.Quality!.MeanKl, 12);                // the stored prefill was not compressed by the runs before
        }
        Assert.Equal(samples.Count, store.Count);
    }

    [Theory]
    [InlineData("snapkv", true)]
    [InlineData("adakv(snapkv)", true)]
    [InlineData("kvzip:level=pair-uniform", true)]
    [InlineData("none", false)]
    [InlineData("kivi:bits=2", false)]         // a quantizer
    [InlineData("mikv(h2o):top=0.2", false)]
    [InlineData("dbudgetkv", false)]           // a dynamic budget
    [InlineData("snapkv:keep=0.3", false)]     // names its own ratio
    public void Factory_KnowsWhichPressesTakeTheSweepsRatio(string press, bool takes)
    {
        var factory = new PressCompressorFactory();
        Assert.Equal(takes, factory.TakesKeepRatio(press));
        string name = factory.Create(press, takes ? 0.25 : 1).Name;
        Assert.Equal(takes, name.Contains("keep=0.25", StringComparison.Ordinal));
    }

    [Fact]
    public void Factory_ReportsAMalformedPressWithTheRegistrysMessage() =>
        Assert.Contains("bogus", Assert.Throws<KvSharpException>(() => new PressCompressorFactory().TakesKeepRatio("bogus")).Message, StringComparison.Ordinal);
}
