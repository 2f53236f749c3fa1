using System.Text;
using KvSharp.Compute.Cuda.Native;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>A loaded cubin and the kernels looked up in it by name.</summary>
internal sealed unsafe class CudaModule : IDisposable
{
    private readonly CudaDevice _device;
    private readonly IntPtr _module;
    private readonly Dictionary<string, CudaFunction> _functions = new(StringComparer.Ordinal);

    private readonly Func<string, bool>? _worksBeforeWait;

    /// <summary>Loads <paramref name="cubin"/>; <paramref name="worksBeforeWait"/> names its kernels that work before griddepcontrol.wait.</summary>
    public CudaModule(CudaDevice device, byte[] cubin, Func<string, bool>? worksBeforeWait = null)
    {
        _device = device;
        _worksBeforeWait = worksBeforeWait;
        device.MakeCurrent();
        fixed (byte* image = cubin) CudaApi.Check(CudaApi.cuModuleLoadData(out _module, image), "cuModuleLoadData");
    }

    /// <summary>
    /// Compiles (or takes from the disk cache) embedded source <paramref name="fileName"/> with the preprocessor
    /// <paramref name="defines"/> and loads it.
    /// </summary>
    public static CudaModule LoadEmbedded(CudaDevice device, string fileName, Func<string, bool>? worksBeforeWait = null, IReadOnlyList<string>? defines = null) =>
        new(device, KernelCompiler.CompileEmbedded(fileName, device.Architecture, defines), worksBeforeWait);

    /// <summary>The extern "C" kernel <paramref name="name"/>.</summary>
    public CudaFunction this[string name]
    {
        get
        {
            lock (_functions)
            {
                if (_functions.TryGetValue(name, out var f)) return f;
                var bytes = Encoding.ASCII.GetBytes(name + "\0");
                IntPtr handle;
                fixed (byte* n = bytes) CudaApi.Check(CudaApi.cuModuleGetFunction(out handle, _module, n), $"cuModuleGetFunction({name})");
                f = new CudaFunction(_device, handle, name) { WorksBeforeWait = _worksBeforeWait?.Invoke(name) ?? false };
                _functions[name] = f;
                return f;
            }
        }
    }

    public void Dispose()
    {
        _device.MakeCurrent();
        CudaApi.cuModuleUnload(_module);
    }
}

/// <summary>Grid or block dimensions.</summary>
internal readonly record struct Dim3(uint X, uint Y = 1, uint Z = 1)
{
    public static implicit operator Dim3(int x) => new((uint)x);
}

/// <summary>
/// A kernel. Arguments are passed as 64-bit slots: device pointers fill one; an int or float sits in
/// the low 4 bytes (little-endian), which is what the driver reads for a 4-byte parameter.
/// </summary>
internal sealed unsafe class CudaFunction(CudaDevice device, IntPtr handle, string name)
{
    public string Name => name;

    /// <summary>
    /// Whether the kernel does useful work before its griddepcontrol.wait (the matrix-vector products' first weight
    /// loads) or gains from being resident when its predecessor ends (the paged cache's decode kernels): such kernels
    /// launch programmatically under <see cref="CudaDevice.ProgrammaticMatrixVector"/>. Settable so that a benchmark can
    /// compare both launches of one kernel (<see cref="CudaPagedKernels.ProgrammaticLaunch"/>).
    /// </summary>
    public bool WorksBeforeWait { get; set; }

    /// <summary>
    /// Queues the kernel on the device's stream; with <see cref="CudaDevice.ProgrammaticLaunch"/> it may start
    /// while the previous kernel finishes (every embedded kernel waits for it with pdl_wait before using its results).
    /// </summary>
    public void Launch(Dim3 grid, Dim3 block, int sharedBytes, params ReadOnlySpan<ulong> args)
    {
        if (grid.X == 0 || grid.Y == 0 || grid.Z == 0) return; // nothing to do: an empty launch is an error in CUDA
        ulong* values = stackalloc ulong[Math.Max(1, args.Length)];
        void** pointers = stackalloc void*[Math.Max(1, args.Length)];
        for (int i = 0; i < args.Length; i++) { values[i] = args[i]; pointers[i] = &values[i]; }
        if (!device.ProgrammaticLaunch && !(WorksBeforeWait && device.ProgrammaticMatrixVector))
        {
            CudaApi.Check(CudaApi.cuLaunchKernel(handle, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, (uint)sharedBytes,
                device.Stream, pointers, null), $"cuLaunchKernel({name})");
            return;
        }
        var attribute = new CudaApi.LaunchAttribute { Id = CudaApi.LaunchAttributeProgrammaticStreamSerialization, Value = 1 };
        var config = new CudaApi.LaunchConfig
        {
            GridX = grid.X,
            GridY = grid.Y,
            GridZ = grid.Z,
            BlockX = block.X,
            BlockY = block.Y,
            BlockZ = block.Z,
            SharedBytes = (uint)sharedBytes,
            Stream = device.Stream,
            Attributes = &attribute,
            AttributeCount = 1,
        };
        CudaApi.Check(CudaApi.cuLaunchKernelEx(&config, handle, pointers, null), $"cuLaunchKernelEx({name})");
    }

    /// <summary>How many blocks of <paramref name="threads"/> threads fit on one multiprocessor at once (registers, shared memory).</summary>
    public int ActiveBlocksPerMultiprocessor(int threads, int sharedBytes = 0)
    {
        CudaApi.Check(CudaApi.cuOccupancyMaxActiveBlocksPerMultiprocessor(out int blocks, handle, threads, (nuint)sharedBytes),
            $"cuOccupancyMaxActiveBlocksPerMultiprocessor({name})");
        return blocks;
    }

    /// <summary>Asks for the largest shared-memory carve-out of L1 for this kernel (occupancy limited by its shared memory).</summary>
    public void PreferSharedMemory() =>
        CudaApi.Check(CudaApi.cuFuncSetAttribute(handle, 9 /* CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT */, 100), $"cuFuncSetAttribute({name})");

    /// <summary>Lets the kernel use up to <paramref name="bytes"/> of dynamic shared memory (beyond the 48 KB default).</summary>
    public void AllowSharedMemory(int bytes) =>
        CudaApi.Check(CudaApi.cuFuncSetAttribute(handle, 8 /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */, bytes), $"cuFuncSetAttribute({name})");
}

/// <summary>Packs kernel arguments into launch slots.</summary>
internal static class Arg
{
    public static ulong Ptr(DeviceBuffer b) => b.Pointer;
    public static ulong Ptr(DeviceBuffer b, long byteOffset) => b.Pointer + (ulong)byteOffset;
    public static ulong Int(int v) => (uint)v;
    public static ulong Long(long v) => (ulong)v;
    public static ulong Float(float v) => BitConverter.SingleToUInt32Bits(v);
    public static ulong Double(double v) => BitConverter.DoubleToUInt64Bits(v);
    public const ulong Null = 0;
}
