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
}
