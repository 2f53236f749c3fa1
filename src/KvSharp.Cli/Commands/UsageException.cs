namespace KvSharp.Cli.Commands;

/// <summary>A command line that cannot run as written (bad option value, missing or conflicting options): exit code 2.</summary>
public sealed class UsageException : KvSharpException
{
    /// <summary>Creates a usage error; the message names the option.</summary>
    public UsageException(string message) : base(message) { }
}
