using KvSharp.Compression.Calibration;
using static KvSharp.Tests.Cli.CalibrateCli;

namespace KvSharp.Tests.Cli;

/// <summary><c>kvsharp calibrate kvzip-heads | baklava | kvsharer</c> on stories260k: files the presses read; bad input is one line.</summary>
public class CalibrateProfileCommandTests
{
    [Fact]
    public void KvzipHeads_WritesAProfileThePressReads()
    {
        using var dir = new TempDir();
        string file = Path.Combine(dir.Path, "heads.json");
        var r = Run("calibrate", "kvzip-heads", "--model", Stories, "--text", Text, "--tokens", "48", "--windows", "2", "--seed", "1", "--out", file);
        Assert.True(r.Code == 0, r.Err);
        var profile = HeadProfile.Load(file, KvzipHeadCalibration.Method);
        Assert.Equal((5, 4), (profile.Layers, profile.KvHeads));
        Assert.All(profile.Flatten(), x => Assert.InRange(x, 0, 1));
        Assert.Contains("\"seed\": 1", File.ReadAllText(file));
        Assert.Contains($"file={file}", r.Out);
    }

    [Fact]
    public void Baklava_WritesAProfileThePressReads()
    {
        using var dir = new TempDir();
        string file = Path.Combine(dir.Path, "baklava.json");
        var r = Run("calibrate", "baklava", "--model", Stories, "--text", Text, "--tokens", "64", "--windows", "2", "--out", file);
        Assert.True(r.Code == 0, r.Err);
        var profile = HeadProfile.Load(file, BaklavaProfiler.Method);
        Assert.Equal((5, 4), (profile.Layers, profile.KvHeads));
        Assert.All(profile.Flatten(), x => Assert.InRange(x, 0, 2));
        Assert.NotNull(KvSharp.Compression.Registry.PressRegistry.Parse($"baklava(snapkv):keep=0.3,file={file}"));
    }

    [Fact]
    public void KvSharer_WritesAMapThePressReads()
    {
        using var dir = new TempDir();
        string file = Path.Combine(dir.Path, "map.json");
        var r = Run("calibrate", "kvsharer", "--model", Stories, "--text", Text, "--tokens", "48", "--windows", "1", "--layers", "2", "--threshold", "0.5", "--out", file);
        Assert.True(r.Code == 0, r.Err);
        var map = KvSharp.Compression.Sharing.KvSharerMap.Load(file);
        Assert.Equal(5, map.Layers);
        Assert.InRange(map.Shares.Count, 0, 2);
        Assert.Contains("\"trials\"", File.ReadAllText(file));
        Assert.NotNull(KvSharp.Compression.Registry.PressRegistry.Parse($"kvsharer:file={file}"));
        var tooMany = Run("calibrate", "kvsharer", "--model", Stories, "--text", Text, "--layers", "5", "--out", file);
        Assert.Equal(2, tooMany.Code);
        Assert.Contains("at most 4 can share", tooMany.Err);
    }

    [Fact]
    public void BadInputIsOneLine()
    {
        var missing = Run("calibrate", "kvzip-heads", "--model", Stories, "--text", "/nonexistent.txt", "--out", "x.json");
        Assert.Equal(2, missing.Code);
        Assert.Contains("--text: '/nonexistent.txt' does not exist", missing.Err);
        var windows = Run("calibrate", "kvzip-heads", "--model", Stories, "--text", Text, "--windows", "0", "--out", "x.json");
        Assert.Equal(2, windows.Code);
        Assert.Contains("--windows must be ≥ 1", windows.Err);
        Assert.DoesNotContain("   at ", windows.Err);
    }
}
