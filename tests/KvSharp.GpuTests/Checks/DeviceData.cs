using System.Runtime.InteropServices;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.GpuTests.Checks;

/// <summary>Device buffers of the checks: inputs uploaded, outputs poisoned with NaN before a launch and read back after it.</summary>
public static class DeviceData
{
    private static CudaDevice Dev => CudaDevice.Shared;

    /// <summary>A device copy of <paramref name="values"/> (at least one byte, so empty inputs still get an address).</summary>
    public static DeviceBuffer Upload<T>(T[] values) where T : unmanaged
    {
        var b = Dev.Allocate(Math.Max(1, values.Length * Marshal.SizeOf<T>()));
        b.Upload<T>(values);
        return b;
    }

    /// <summary><paramref name="bytes"/> filled with NaN: an element a kernel never writes fails every comparison.</summary>
    public static DeviceBuffer Poisoned(long bytes)
    {
        var b = Dev.Allocate(bytes);
        b.Poison();
        return b;
    }

    /// <summary>The first <paramref name="n"/> floats of <paramref name="b"/> once the queued work is done.</summary>
    public static float[] Result(DeviceBuffer b, int n)
    {
        Dev.Synchronize();
        var r = new float[n];
        b.Download<float>(r);
        return r;
    }
}
