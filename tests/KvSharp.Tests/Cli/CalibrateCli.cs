using KvSharp.Cli.Commands;
using KvSharp.Cli.Engine;

namespace KvSharp.Tests.Cli;

/// <summary>What the <c>kvsharp calibrate</c> tests share: stories260k, a text that is not its evaluation set, and an in-process CLI run.</summary>
internal static class CalibrateCli
{
    /// <summary>The 5-layer stories260K model.</summary>
    public static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    /// <summary>Calibration text for it.</summary>
    public static readonly string Text = RepoPaths.SharedFile("data", "misc", "tinystories_valid_excerpt.txt");

    /// <summary>Runs the CLI with <paramref name="args"/>; returns its exit code and what it wrote to stdout and stderr.</summary>
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = KvSharpCommandLine.Run(args, new CliContext(new EngineFacade(error), new StringReader(""), output, error, CancellationToken.None));
        return (code, output.ToString(), error.ToString());
    }
}
