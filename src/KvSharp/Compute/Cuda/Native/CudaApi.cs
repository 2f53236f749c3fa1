using System.Runtime.InteropServices;

namespace KvSharp.Compute.Cuda.Native;

/// <summary>
/// The subset of the CUDA driver API (libcuda.so.1) the backend uses. Handles are opaque pointers;
/// device addresses are 64-bit integers (CUdeviceptr). Versioned entry points (_v2) are the ones
/// the CUDA headers map the plain names to.
/// </summary>
internal static unsafe partial class CudaApi
{
    static CudaApi() => NativeLibraries.Register();

    public const int AttrMultiprocessorCount = 16;
    public const int AttrL2CacheSize = 38;
    public const int AttrComputeCapabilityMajor = 75;
    public const int AttrComputeCapabilityMinor = 76;
    public const int AttrMaxSharedMemoryPerBlockOptin = 97;
    public const int AttrMaxSharedMemoryPerMultiprocessor = 81;
    public const int AttrReservedSharedMemoryPerBlock = 111;
    public const uint StreamNonBlocking = 1;
    public const uint EventDefault = 0;
    public const int StreamCaptureModeThreadLocal = 1;

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuInit(uint flags);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDriverGetVersion(out int version);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGetErrorString(int error, out byte* text);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGetErrorName(int error, out byte* text);

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetCount(out int count);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGet(out int device, int ordinal);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDeviceGetAttribute(out int value, int attribute, int device);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuDeviceTotalMem_v2")] public static partial int cuDeviceTotalMem(out nuint bytes, int device);

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuDevicePrimaryCtxRetain(out IntPtr context, int device);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuDevicePrimaryCtxRelease_v2")] public static partial int cuDevicePrimaryCtxRelease(int device);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuCtxSetCurrent(IntPtr context);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuCtxSynchronize();
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemGetInfo_v2")] public static partial int cuMemGetInfo(out nuint free, out nuint total);

    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemAlloc_v2")] public static partial int cuMemAlloc(out ulong pointer, nuint bytes);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemFree_v2")] public static partial int cuMemFree(ulong pointer);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemAllocHost_v2")] public static partial int cuMemAllocHost(out IntPtr pointer, nuint bytes);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuMemFreeHost(IntPtr pointer);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyHtoDAsync_v2")] public static partial int cuMemcpyHtoDAsync(ulong dst, void* src, nuint bytes, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyDtoHAsync_v2")] public static partial int cuMemcpyDtoHAsync(void* dst, ulong src, nuint bytes, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpyDtoDAsync_v2")] public static partial int cuMemcpyDtoDAsync(ulong dst, ulong src, nuint bytes, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuMemsetD32Async(ulong dst, uint value, nuint count, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuMemcpy2DAsync_v2")] public static partial int cuMemcpy2DAsync(Memcpy2D* copy, IntPtr stream);

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamCreate(out IntPtr stream, uint flags);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuStreamDestroy_v2")] public static partial int cuStreamDestroy(IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamSynchronize(IntPtr stream);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuStreamBeginCapture_v2")] public static partial int cuStreamBeginCapture(IntPtr stream, int mode);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuStreamEndCapture(IntPtr stream, out IntPtr graph);

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGraphInstantiateWithFlags(out IntPtr graphExec, IntPtr graph, ulong flags);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGraphLaunch(IntPtr graphExec, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGraphExecDestroy(IntPtr graphExec);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuGraphDestroy(IntPtr graph);

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventCreate(out IntPtr evt, uint flags);
    [LibraryImport(NativeLibraries.Driver, EntryPoint = "cuEventDestroy_v2")] public static partial int cuEventDestroy(IntPtr evt);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventRecord(IntPtr evt, IntPtr stream);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventSynchronize(IntPtr evt);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuEventElapsedTime(out float milliseconds, IntPtr start, IntPtr end);

    [LibraryImport(NativeLibraries.Driver)] public static partial int cuModuleLoadData(out IntPtr module, void* image);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuModuleUnload(IntPtr module);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuModuleGetFunction(out IntPtr function, IntPtr module, byte* name);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuFuncSetAttribute(IntPtr function, int attribute, int value);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuFuncGetAttribute(out int value, int attribute, IntPtr function);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuOccupancyMaxActiveBlocksPerMultiprocessor(out int blocks, IntPtr function, int blockSize, nuint dynamicSharedBytes);
    [LibraryImport(NativeLibraries.Driver)] public static partial int cuLaunchKernelEx(LaunchConfig* config, IntPtr function, void** parameters, void** extra);
    [LibraryImport(NativeLibraries.Driver)]
    public static partial int cuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, void** parameters, void** extra);

    /// <summary>CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: the kernel may start before the previous one ends (it waits with griddepcontrol.wait).</summary>
    public const int LaunchAttributeProgrammaticStreamSerialization = 6;

    /// <summary>CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte value union (only its first int is used here).</summary>
    [StructLayout(LayoutKind.Sequential, Size = 72)]
    public struct LaunchAttribute
    {
        public int Id;
        public int Pad;
        public int Value;
    }

    /// <summary>CUlaunchConfig.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct LaunchConfig
    {
        public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
        public IntPtr Stream;
        public LaunchAttribute* Attributes;
        public uint AttributeCount;
    }

    /// <summary>CU_MEMORYTYPE_HOST and CU_MEMORYTYPE_DEVICE.</summary>
    public const int MemoryTypeHost = 1, MemoryTypeDevice = 2;

    /// <summary>CUDA_MEMCPY2D: source and destination (x in bytes, row, memory type, host / device / array address, pitch), then the width in bytes and the rows.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Memcpy2D
    {
        public nuint SrcXInBytes, SrcY;
        public int SrcMemoryType;
        public void* SrcHost;
        public ulong SrcDevice;
        public IntPtr SrcArray;
        public nuint SrcPitch;
        public nuint DstXInBytes, DstY;
        public int DstMemoryType;
        public void* DstHost;
        public ulong DstDevice;
        public IntPtr DstArray;
        public nuint DstPitch;
        public nuint WidthInBytes, Height;
    }

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> and the driver's description of the error.</summary>
    public static void Check(int result, string call)
    {
        if (result != 0) throw new CudaException(call, Describe(result));
    }

    /// <summary>"CUDA_ERROR_NAME (description)" for a driver result code.</summary>
    public static string Describe(int result)
    {
        string name = cuGetErrorName(result, out byte* n) == 0 && n != null ? Marshal.PtrToStringUTF8((IntPtr)n)! : $"error {result}";
        string text = cuGetErrorString(result, out byte* t) == 0 && t != null ? Marshal.PtrToStringUTF8((IntPtr)t)! : "unknown error";
        return $"{name} ({text})";
    }
}
