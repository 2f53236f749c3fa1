using KvSharp.Compression.Quantization;
using static KvSharp.Tests.Cli.CalibrateCli;

namespace KvSharp.Tests.Cli;

/// <summary><c>kvsharp calibrate kvtuner</c> on stories260k: writes a configuration the press reads (search determinism: KvTunerTests); bad input is one line.</summary>
public class CalibrateCommandTests
{
    [Fact]
    public void WritesAConfigWithinTheBudget()
    {
        using var dir = new TempDir();
        string a = Path.Combine(dir.Path, "a.json");
        string[] common = ["calibrate", "kvtuner", "--model", Stories, "--text", Text, "--budget", "3.5", "--tokens", "16", "--generations", "5", "--seed", "5"];
        var r = Run([.. common, "--out", a]);
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("chosen:", r.Out);
        var config = KvTunerConfig.Load(a);
        Assert.Equal(5, config.Layers.Count);
        Assert.True(config.MeanBits <= 3.5);
        Assert.Contains("\"pareto_front\"", File.ReadAllText(a));
    }

    [Fact]
    public void BadInputIsOneLine()
    {
        using var dir = new TempDir();
        var r = Run("calibrate", "kvtuner", "--model", Stories, "--text", Text, "--budget", "1", "--tokens", "24", "--out", Path.Combine(dir.Path, "x.json"));
        Assert.Equal(2, r.Code);
        Assert.Contains("--budget 1 is below the smallest pair's 2", r.Err);
        Assert.DoesNotContain("   at ", r.Err);
        var missing = Run("calibrate", "kvtuner", "--model", Stories, "--text", "/nonexistent.txt", "--budget", "4", "--out", "x.json");
        Assert.Equal(2, missing.Code);
        Assert.Contains("--text", missing.Err);
    }
}
