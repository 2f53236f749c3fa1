using System.Runtime.InteropServices;
using KvSharp.Compute.Cuda.Native;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>
/// One NVIDIA GPU: its primary context, one non-blocking stream on which all of the backend's work is
/// queued in order, and the properties kernels are tuned by. Opening fails with a single
/// "CUDA unavailable: ..." <see cref="CudaException"/> when there is no driver or no device, so callers
/// can fall back to the CPU backend, which stays the default.
/// </summary>
public sealed unsafe class CudaDevice : IDisposable
{
    private static readonly Lazy<string?> Probe = new(ProbeReason);
    private static readonly Lazy<CudaDevice> SharedDevice = new(() => Open());
    private IntPtr _context;
    private bool _disposed;

    private CudaDevice(int ordinal)
    {
        Ordinal = ordinal;
        CudaApi.Check(CudaApi.cuDeviceGet(out int device, ordinal), "cuDeviceGet");
        Handle = device;
        byte* name = stackalloc byte[256];
        CudaApi.Check(CudaApi.cuDeviceGetName(name, 256, device), "cuDeviceGetName");
        Name = Marshal.PtrToStringUTF8((IntPtr)name) ?? "?";
        ComputeMajor = Attribute(CudaApi.AttrComputeCapabilityMajor);
        ComputeMinor = Attribute(CudaApi.AttrComputeCapabilityMinor);
        MultiprocessorCount = Attribute(CudaApi.AttrMultiprocessorCount);
        L2CacheBytes = Attribute(CudaApi.AttrL2CacheSize);
        MaxSharedMemoryPerBlock = Attribute(CudaApi.AttrMaxSharedMemoryPerBlockOptin);
        MaxSharedMemoryPerMultiprocessor = Attribute(CudaApi.AttrMaxSharedMemoryPerMultiprocessor);
        ReservedSharedMemoryPerBlock = Attribute(CudaApi.AttrReservedSharedMemoryPerBlock);
        CudaApi.Check(CudaApi.cuDeviceTotalMem(out nuint total, device), "cuDeviceTotalMem_v2");
        TotalMemory = (long)total;
        string? pdl = Environment.GetEnvironmentVariable("KVSHARP_CUDA_PDL");
        ProgrammaticLaunch = ComputeMajor >= 9 && pdl == "1";
        ProgrammaticMatrixVector = ComputeMajor >= 9 && pdl != "0" && pdl != "1";
        CudaApi.Check(CudaApi.cuDevicePrimaryCtxRetain(out _context, device), "cuDevicePrimaryCtxRetain");
        MakeCurrent();
        CudaApi.Check(CudaApi.cuStreamCreate(out var stream, CudaApi.StreamNonBlocking), "cuStreamCreate");
        Stream = stream;
    }

    /// <summary>Why CUDA cannot be used on this machine, or null when a device is available.</summary>
    public static string? UnavailableReason => Probe.Value;

    /// <summary>Whether a CUDA device can be opened.</summary>
    public static bool IsAvailable => Probe.Value == null;

    /// <summary>One device opened on first use and kept for the process (tests and tools share it).</summary>
    public static CudaDevice Shared => SharedDevice.Value;

    /// <summary>Opens device <paramref name="ordinal"/>; a "CUDA unavailable: ..." error when there is none.</summary>
    public static CudaDevice Open(int ordinal = 0)
    {
        if (Probe.Value is { } reason) throw CudaException.Unavailable(reason);
        CudaApi.Check(CudaApi.cuDeviceGetCount(out int count), "cuDeviceGetCount");
        if (ordinal < 0 || ordinal >= count)
            throw CudaException.Unavailable($"device {ordinal} requested, {count} present");
        return new CudaDevice(ordinal);
    }

    /// <summary>Device index.</summary>
    public int Ordinal { get; }

    /// <summary>Marketing name ("NVIDIA H100 80GB HBM3").</summary>
    public string Name { get; }

    /// <summary>Compute capability, major part (9 on Hopper).</summary>
    public int ComputeMajor { get; }

    /// <summary>Compute capability, minor part.</summary>
    public int ComputeMinor { get; }

    /// <summary>Streaming multiprocessors: kernels size their grids to fill them.</summary>
    public int MultiprocessorCount { get; }

    /// <summary>L2 cache size in bytes.</summary>
    public int L2CacheBytes { get; }

    /// <summary>Largest dynamic shared memory one block may opt into.</summary>
    public int MaxSharedMemoryPerBlock { get; }

    /// <summary>Shared memory of one multiprocessor at its largest carve-out of the L1/shared array (228 KB on sm_90).</summary>
    public int MaxSharedMemoryPerMultiprocessor { get; }

    /// <summary>Shared memory the system keeps for each resident block (1 KB on sm_80 and later).</summary>
    public int ReservedSharedMemoryPerBlock { get; }

    /// <summary>Device memory in bytes.</summary>
    public long TotalMemory { get; }

    /// <summary>The architecture NVRTC compiles for ("sm_90").</summary>
    public string Architecture => $"sm_{ComputeMajor}{ComputeMinor}";

    internal int Handle { get; }

    /// <summary>
    /// Whether kernels launch with programmatic dependent launch (compute capability 9.0 and up): the next kernel's
    /// blocks start as the previous kernel's retire. Off unless $KVSHARP_CUDA_PDL=1: on an H100 it adds nothing measurable over
    /// <see cref="ProgrammaticMatrixVector"/> (the kernels without work before their wait gain nothing from an early start;
    /// docs/benchmarks.md, issue 7); benchmarks compare both.
    /// </summary>
    public bool ProgrammaticLaunch { get; set; }

    /// <summary>
    /// Whether the kernels that start useful work before waiting for the previous kernel (the matrix-vector products load
    /// their first weights, the streaming attention its first older keys, before griddepcontrol.wait) launch with
    /// programmatic dependent launch even when
    /// <see cref="ProgrammaticLaunch"/> is off: the DRAM stays busy across the kernel boundary, while attention and the
    /// small kernels still start only after their predecessor ended. On by default on compute capability 9.0 and up;
    /// $KVSHARP_CUDA_PDL=0 turns it off, =1 launches every kernel programmatically (docs/benchmarks.md, issue 7).
    /// </summary>
    public bool ProgrammaticMatrixVector { get; set; }

    internal IntPtr Stream { get; }

    /// <summary>Free device memory in bytes.</summary>
    public long FreeMemory
    {
        get
        {
            MakeCurrent();
            CudaApi.Check(CudaApi.cuMemGetInfo(out nuint free, out _), "cuMemGetInfo_v2");
            return (long)free;
        }
    }

    /// <summary>Allocates <paramref name="bytes"/> of device memory (plain cuMemAlloc, never managed memory).</summary>
    public DeviceBuffer Allocate(long bytes) => new(this, bytes);

    /// <summary>Waits for all work queued on the device's stream; surfaces errors of earlier asynchronous launches.</summary>
    public void Synchronize()
    {
        MakeCurrent();
        CudaApi.Check(CudaApi.cuStreamSynchronize(Stream), "cuStreamSynchronize");
    }

    /// <summary>Binds the device's context to the calling thread (contexts are per thread in the driver API).</summary>
    internal void MakeCurrent() => CudaApi.Check(CudaApi.cuCtxSetCurrent(_context), "cuCtxSetCurrent");

    /// <summary>One line: name, architecture, multiprocessors, memory.</summary>
    public override string ToString() =>
        $"{Name} ({Architecture}, {MultiprocessorCount} SMs, {TotalMemory / (1L << 30)} GiB)";

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        MakeCurrent();
        CudaApi.cuStreamDestroy(Stream);
        CudaApi.cuDevicePrimaryCtxRelease(Handle);
        _context = IntPtr.Zero;
    }

    private int Attribute(int attribute)
    {
        CudaApi.Check(CudaApi.cuDeviceGetAttribute(out int value, attribute, Handle), "cuDeviceGetAttribute");
        return value;
    }

    private static string? ProbeReason()
    {
        try
        {
            int r = CudaApi.cuInit(0);
            if (r != 0) return $"cuInit failed: {CudaApi.Describe(r)}";
            r = CudaApi.cuDeviceGetCount(out int count);
            if (r != 0) return $"cuDeviceGetCount failed: {CudaApi.Describe(r)}";
            return count == 0 ? "no CUDA device is present" : null;
        }
        catch (DllNotFoundException)
        {
            return "the NVIDIA driver library libcuda.so.1 was not found (no NVIDIA driver on this machine)";
        }
        catch (EntryPointNotFoundException e)
        {
            return $"the NVIDIA driver is too old: {e.Message}";
        }
    }
}
