namespace KvSharp.Generation;

/// <summary>TEMPORARY (gpupress2's A/B call): KVSHARP_AB_OLD=1 runs the decode press's host work as before this branch.</summary>
internal static class AbSwitch
{
    public static readonly bool Old = Environment.GetEnvironmentVariable("KVSHARP_AB_OLD") == "1";

    /// <summary>Stopwatch ticks in: statistics read-back, accumulation, scoring, selection, eviction.</summary>
    public static readonly long[] Phase = new long[5];

    public static void Add(int phase, long start) => Phase[phase] += System.Diagnostics.Stopwatch.GetTimestamp() - start;
}
