using KvSharp.Cli.Commands;

namespace KvSharp.Cli;

internal static class Program
{
    private static int Main(string[] args) => KvSharpCommandLine.RunOnConsole(args);
}
