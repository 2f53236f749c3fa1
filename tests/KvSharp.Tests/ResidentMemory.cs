namespace KvSharp.Tests;

/// <summary>
/// The process's resident memory, as the kernel counts it. Tests that assert on it run in the
/// <see cref="ResidentMemoryCollection"/>: alone, after the parallel classes, because another class allocating or freeing
/// hundreds of MiB at the same moment moves the same counter (one such failure was seen on an idle machine).
/// </summary>
internal static class ResidentMemory
{
    /// <summary>Resident bytes from /proc/self/statm (Linux only): size resident shared ... in pages.</summary>
    public static long Bytes()
    {
        var fields = File.ReadAllText("/proc/self/statm").Split(' ');
        return long.Parse(fields[1]) * Environment.SystemPageSize;
    }
}

/// <summary>The test classes that measure process-wide resident memory; xunit runs them with no other test beside them.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ResidentMemoryCollection
{
    /// <summary>The collection's name, for <c>[Collection(ResidentMemoryCollection.Name)]</c>.</summary>
    public const string Name = "Resident memory";
}
