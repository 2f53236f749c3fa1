using System.Diagnostics;
using System.Globalization;

namespace KvSharp.Evaluation.Running;

/// <summary>The process memory one cell used: its peak resident set and how far that rose above the cell's start.</summary>
/// <param name="PeakRssBytes">Peak resident set size during the cell (Linux: VmHWM, reset at the cell's start).</param>
/// <param name="PeakRssDeltaBytes">Peak resident set minus the resident set at the cell's start.</param>
/// <param name="PerCell">Whether the peak was reset at the cell's start; false where the OS does not allow it, and then
/// <paramref name="PeakRssBytes"/> is the process's peak so far (monotonic over a sweep).</param>
public sealed record CellMemory(long PeakRssBytes, long PeakRssDeltaBytes, bool PerCell);

/// <summary>
/// Measures <see cref="CellMemory"/> around a cell. On Linux, writing 5 to /proc/self/clear_refs resets the peak
/// resident set (VmHWM in /proc/self/status) to the current one, so each cell's peak is its own; a full compacting GC
/// first returns the previous cell's garbage to the OS, so the start is not inflated by it.
/// </summary>
public sealed class CellMemoryMeter
{
    private readonly long _startRss;
    private readonly bool _reset;

    private CellMemoryMeter(long startRss, bool reset)
    {
        _startRss = startRss;
        _reset = reset;
    }

    /// <summary>Collects garbage, resets the peak where possible and records the resident set now.</summary>
    public static CellMemoryMeter Start()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        bool reset = TryResetPeak();
        return new CellMemoryMeter(Status("VmRSS") ?? CurrentWorkingSet(), reset);
    }

    /// <summary>The memory used since <see cref="Start"/>.</summary>
    public CellMemory Stop()
    {
        long peak = (_reset ? Status("VmHWM") : null) ?? ProcessPeak();
        return new CellMemory(peak, Math.Max(0, peak - _startRss), _reset);
    }

    private static bool TryResetPeak()
    {
        try
        {
            if (!OperatingSystem.IsLinux() || !File.Exists("/proc/self/clear_refs")) return false;
            // Opened, not created or truncated: /proc files refuse both.
            using (var file = new FileStream("/proc/self/clear_refs", FileMode.Open, FileAccess.Write))
                file.Write("5"u8);
            return Status("VmHWM") != null;
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>A <c>kB</c> field of /proc/self/status in bytes, or null where it cannot be read.</summary>
    private static long? Status(string field)
    {
        try
        {
            if (!OperatingSystem.IsLinux()) return null;
            foreach (var line in File.ReadLines("/proc/self/status"))
            {
                if (!line.StartsWith(field + ":", StringComparison.Ordinal)) continue;
                var parts = line[(field.Length + 1)..].Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
                return parts.Length >= 1 && long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out long kb) ? kb * 1024 : null;
            }
            return null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    private static long CurrentWorkingSet()
    {
        using var process = Process.GetCurrentProcess();
        return process.WorkingSet64;
    }

    private static long ProcessPeak()
    {
        using var process = Process.GetCurrentProcess();
        return process.PeakWorkingSet64;
    }
}
