using KvSharp.Cli.Commands;
using KvSharp.Cli.Engine;
using KvSharp.Compression.Calibration;

namespace KvSharp.Tests.Cli;

/// <summary><c>kvsharp calibrate kvzip-heads | baklava | kvsharer</c> on stories260k: files the presses read; bad input is one line.</summary>
public class CalibrateProfileCommandTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");
    private static readonly string Text = RepoPaths.SharedFile("data", "misc", "tinystories_valid_excerpt.txt");

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = KvSharpCommandLine.Run(args, new CliContext(new EngineFacade(error), new StringReader(""), output, error, CancellationToken.None));
        return (code, output.ToString(), error.ToString());
    }

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
