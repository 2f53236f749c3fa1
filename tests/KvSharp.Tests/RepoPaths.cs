namespace KvSharp.Tests;

/// <summary>Locates the repository root and ../shared from the test binary's folder.</summary>
internal static class RepoPaths
{
    public static string Root { get; } = FindRoot();

    /// <summary>The shared read-only inputs beside the repository.</summary>
    public static string Shared { get; } = Path.GetFullPath(Path.Combine(Root, "..", "shared"));

    /// <summary>A path under ../shared.</summary>
    public static string SharedFile(params string[] parts) => Path.Combine([Shared, .. parts]);

    private static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "KvSharp.slnx"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("KvSharp.slnx not found above " + AppContext.BaseDirectory);
    }
}
