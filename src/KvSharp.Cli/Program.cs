namespace KvSharp.Cli;

internal static class Program
{
    private static int Main(string[] args)
    {
        Console.Error.WriteLine("kvsharp: commands are being built");
        return args.Length == 0 ? 1 : 1;
    }
}
