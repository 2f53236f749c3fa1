using KvSharp.Cli.Commands;

namespace KvSharp.Cli;

internal static class Program
{
    private static int Main(string[] args)
    {
        using var cancel = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            // First Ctrl+C stops generation cleanly; a second one kills the process as usual.
            if (cancel.IsCancellationRequested) return;
            e.Cancel = true;
            cancel.Cancel();
        };
        var context = new CliContext(new KvSharp.Cli.Engine.EngineFacade(Console.Error), Console.In, Console.Out, Console.Error, cancel.Token);
        return KvSharpCommandLine.Run(args, context);
    }
}
