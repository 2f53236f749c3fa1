using KvSharp.Evaluation.Running;

namespace KvSharp.Tests.Evaluation;

/// <summary>The per-cell peak resident memory of a sweep (process-wide, so measured with no other test running).</summary>
[Collection(ResidentMemoryCollection.Name)]
public sealed class CellMemoryTests
{
    [Fact]
    public void CellMemory_IsResetBetweenCells()
    {
        if (!OperatingSystem.IsLinux()) return; // the per-cell reset is /proc's
        const int size = 96 << 20;
        var first = CellMemoryMeter.Start();
        var big = new byte[size];
        Array.Fill(big, (byte)1); // touch every page, so it is resident
        GC.KeepAlive(big);
        big = null;
        var used = first.Stop();
        var second = CellMemoryMeter.Start().Stop(); // a cell that allocates nothing
        Assert.True(used.PerCell && second.PerCell);
        Assert.True(used.PeakRssDeltaBytes >= size * 0.9, $"first cell rose {used.PeakRssDeltaBytes} bytes");
        Assert.True(second.PeakRssDeltaBytes < size / 4, $"an idle cell rose {second.PeakRssDeltaBytes} bytes");
        Assert.True(second.PeakRssBytes < used.PeakRssBytes - (size / 2), $"the peak was not reset: {second.PeakRssBytes} after {used.PeakRssBytes}");
    }
}
