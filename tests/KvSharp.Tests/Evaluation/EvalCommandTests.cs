using KvSharp.Cli.Commands;

namespace KvSharp.Tests.Evaluation;

/// <summary><c>kvsharp eval</c> and <c>kvsharp report</c>: a tiny run end to end, and bad input as one line and an exit code.</summary>
public sealed class EvalCommandTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var context = new CliContext(new KvSharp.Cli.Engine.EngineFacade(TextWriter.Null), TextReader.Null, output, error, CancellationToken.None);
        int code = KvSharpCommandLine.Run(args, context);
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void EvalThenReport_WritesResultsTableAndPlots()
    {
        using var dir = new TempDir();
        string results = dir.File("r.jsonl");
        string config = dir.File("sweep.yaml");
        File.WriteAllText(config, $"""
            models: ["{RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf")}"]
            tasks: [lm:tinystories]
            presses: [none, streamingllm]
            keep: [0.5]
            samples: 1
            length: 256
            """);
        var (code, output, error) = Run("eval", "--config", config, "--data", RepoPaths.SharedFile("data"), "--out", results);
        Assert.True(code == 0, error);
        Assert.Contains("| stories260K.gguf | lm:tinystories | none |", output, StringComparison.Ordinal);
        Assert.Contains("| stories260K.gguf | lm:tinystories | streamingllm | 0.5 |", output, StringComparison.Ordinal);
        Assert.Equal(2, File.ReadAllLines(results).Length);

        (code, output, error) = Run("report", results);
        Assert.True(code == 0, error);
        Assert.True(File.Exists(dir.File("r.md")));
        var png = File.ReadAllBytes(dir.File("r-stories260K.gguf-lm_tinystories-keep.png"));
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);
        Assert.True(File.Exists(dir.File("r-stories260K.gguf-lm_tinystories-bytes.png")));
        Assert.True(File.Exists(dir.File("r-stories260K.gguf-lm_tinystories-kl.png"))); // a press with KL > 0
    }

    [Theory]
    [InlineData(2, "--keep", "--task", "lm:tinystories", "--keep", "0.5,2")]
    [InlineData(2, "--task is required")]
    [InlineData(1, "unknown method 'snapkvv'", "--task", "lm:tinystories", "--press", "snapkvv")]
    [InlineData(1, "unknown kind 'nope'", "--task", "nope:x")]
    public void BadInput_IsOneLineAndAnExitCode(int exit, string message, params string[] args)
    {
        using var dir = new TempDir();
        var (code, _, error) = Run(["eval", "--model", RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"), "--data", RepoPaths.SharedFile("data"), "--out", dir.File("r.jsonl"), .. args]);
        Assert.Equal(exit, code);
        Assert.Contains(message, error, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Report_OfAMissingFileIsAUsageError()
    {
        var (code, _, error) = Run("report", "/nonexistent/results.jsonl");
        Assert.Equal(2, code);
        Assert.Contains("does not exist", error, StringComparison.Ordinal);
    }
}
