using System.Runtime.InteropServices;

namespace KvSharp.Bench.Cache;

/// <summary>
/// CPU time of the calling thread (Linux clock_gettime(CLOCK_THREAD_CPUTIME_ID), nanosecond resolution). On a machine
/// shared with other work, wall time measures the scheduler; the thread's CPU time measures the work (still slowed by
/// shared caches and memory, not by waiting for a core).
/// </summary>
internal static partial class ThreadCpuTime
{
    private const int ClockThreadCpuTimeId = 3;

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out TimeSpec time);

    /// <summary>Whether the clock is available (Linux).</summary>
    public static bool Available { get; } = OperatingSystem.IsLinux();

    /// <summary>Seconds of CPU the calling thread has used.</summary>
    public static double Seconds()
    {
        if (!Available || ClockGetTime(ClockThreadCpuTimeId, out var t) != 0) return double.NaN;
        return t.Seconds + t.Nanoseconds * 1e-9;
    }
}
