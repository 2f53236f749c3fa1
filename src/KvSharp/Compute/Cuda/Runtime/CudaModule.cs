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
    private readonly int _preferL1Threads;

    /// <summary>
    /// Loads <paramref name="cubin"/>; <paramref name="worksBeforeWait"/> names its kernels that work before griddepcontrol.wait;
    /// with <paramref name="preferL1Threads"/> &gt; 0 every kernel of the module asks for the most L1 its blocks of that many
    /// threads allow (<see cref="CudaFunction.PreferL1"/>).
    /// </summary>
    public CudaModule(CudaDevice device, byte[] cubin, Func<string, bool>? worksBeforeWait = null, int preferL1Threads = 0)
    {
        _device = device;
        _worksBeforeWait = worksBeforeWait;
        _preferL1Threads = preferL1Threads;
        device.MakeCurrent();
        fixed (byte* image = cubin) CudaApi.Check(CudaApi.cuModuleLoadData(out _module, image), "cuModuleLoadData");
    }

    /// <summary>
    /// Compiles (or takes from the disk cache) embedded source <paramref name="fileName"/> with the preprocessor
    /// <paramref name="defines"/> and loads it.
    /// </summary>
    public static CudaModule LoadEmbedded(CudaDevice device, string fileName, Func<string, bool>? worksBeforeWait = null, IReadOnlyList<string>? defines = null,
        int preferL1Threads = 0) =>
        new(device, KernelCompiler.CompileEmbedded(fileName, device.Architecture, defines), worksBeforeWait, preferL1Threads);

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
                if (_preferL1Threads > 0) f.PreferL1(_preferL1Threads);
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

    /// <summary>
    /// Asks for the smallest shared-memory carve-out that still holds as many blocks of <paramref name="threads"/> threads
    /// as the kernel's registers allow (its static shared memory and the per-block reservation each), the rest of the
    /// L1/shared array staying L1. The carve-out is a setting of each multiprocessor, and a kernel without a preference
    /// runs in whatever setting the multiprocessor has when its blocks fit it: after the paged attention, which asks for
    /// the largest (<see cref="PreferSharedMemory"/>), the matrix products ran with 28 KB of L1 and their activations no
    /// longer stayed in it. On an H100 a fixed 14% for every product, the 32 KB carve-out that the 12% and 13% computed
    /// here for the tensor-core products (3 blocks of 8 or 8.5 KB + 1 KB reserved) also round up to, made a batch-8 paged
    /// step at 32K tokens 5-9% faster and a batch-1 one 1.9-2.6%, the dense steps unchanged (docs/benchmarks.md, stop 24).
    /// </summary>
    public void PreferL1(int threads)
    {
        int blocks = ActiveBlocksPerMultiprocessor(threads);
        CudaApi.Check(CudaApi.cuFuncGetAttribute(out int staticShared, 1 /* CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES */, handle), $"cuFuncGetAttribute({name})");
        int percent = CarveoutPercent(blocks, staticShared, device.ReservedSharedMemoryPerBlock, device.MaxSharedMemoryPerMultiprocessor);
        CudaApi.Check(CudaApi.cuFuncSetAttribute(handle, 9 /* CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT */, percent), $"cuFuncSetAttribute({name})");
    }

    /// <summary>
    /// The carve-out, in percent of <paramref name="maxSharedPerSm"/> (rounded up: the driver takes the next setting it
    /// has), that holds <paramref name="blocks"/> blocks of <paramref name="staticShared"/> bytes plus
    /// <paramref name="reservedPerBlock"/> each, every block's share rounded up to <see cref="SharedAllocationGranularity"/>.
    /// </summary>
    internal static int CarveoutPercent(int blocks, int staticShared, int reservedPerBlock, int maxSharedPerSm)
    {
        long perBlock = (staticShared + reservedPerBlock + SharedAllocationGranularity - 1L) / SharedAllocationGranularity * SharedAllocationGranularity;
        long need = Math.Max(1, blocks) * perBlock;
        return (int)Math.Clamp((need * 100 + maxSharedPerSm - 1) / maxSharedPerSm, 0, 100);
    }

    /// <summary>
    /// Bytes a block's shared memory (static, dynamic and the reservation together) is allocated in on sm_80 and later
    /// (cuda_occupancy.h's cudaOccSMemAllocationGranularity): a block of 129 bytes plus 1 KB takes 1,280.
    /// </summary>
    internal const int SharedAllocationGranularity = 128;

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
