namespace KvSharp.Cli.Commands;

/// <summary>Finds the shared data folder (needle_eval, ruler, leval, essays, misc) the evaluation tasks read.</summary>
internal static class DataFolder
{
    /// <summary>
    /// <paramref name="given"/> when set; else $KVSHARP_DATA; else the first <c>shared/data</c> in the current folder or
    /// a folder above it (the repository's <c>../shared/data</c>).
    /// </summary>
    public static string Resolve(string? given)
    {
        if (given != null)
            return Directory.Exists(given) ? given : throw new UsageException($"--data: '{given}' is not a folder");
        if (Environment.GetEnvironmentVariable("KVSHARP_DATA") is { Length: > 0 } env)
            return Directory.Exists(env) ? env : throw new KvSharpException($"KVSHARP_DATA: '{env}' is not a folder");
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir != null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "data");
            if (Directory.Exists(candidate)) return candidate;
        }
        // Not an error yet: tasks that need no files (ruler:vt, ruler:fwe, shared:N) still run.
        return Path.Combine(Directory.GetCurrentDirectory(), "shared", "data");
    }
}
