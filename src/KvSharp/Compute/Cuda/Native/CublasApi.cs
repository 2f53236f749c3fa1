using System.Runtime.InteropServices;

namespace KvSharp.Compute.Cuda.Native;

/// <summary>cuBLAS (libcublas.so.*): the dense matrix products of prefill.</summary>
internal static unsafe partial class CublasApi
{
    static CublasApi() => NativeLibraries.Register();

    public const int OpN = 0;
    public const int OpT = 1;
    public const int DataF32 = 0;   // CUDA_R_32F
    public const int DataF16 = 2;   // CUDA_R_16F
    public const int DataBF16 = 14; // CUDA_R_16BF
    public const int ComputeF32 = 68; // CUBLAS_COMPUTE_32F: float accumulation, no TF32 shortcut
    public const int GemmDefault = -1;

    [LibraryImport(NativeLibraries.Cublas, EntryPoint = "cublasCreate_v2")] public static partial int cublasCreate(out IntPtr handle);
    [LibraryImport(NativeLibraries.Cublas, EntryPoint = "cublasDestroy_v2")] public static partial int cublasDestroy(IntPtr handle);
    [LibraryImport(NativeLibraries.Cublas, EntryPoint = "cublasSetStream_v2")] public static partial int cublasSetStream(IntPtr handle, IntPtr stream);
    [LibraryImport(NativeLibraries.Cublas)] public static partial byte* cublasGetStatusString(int status);
    [LibraryImport(NativeLibraries.Cublas)]
    public static partial int cublasGemmEx(IntPtr handle, int transA, int transB, int m, int n, int k, void* alpha,
        ulong a, int aType, int lda, ulong b, int bType, int ldb, void* beta, ulong c, int cType, int ldc, int computeType, int algo);

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> and cuBLAS's status string.</summary>
    public static void Check(int status, string call)
    {
        if (status != 0) throw new CudaException(call, Marshal.PtrToStringUTF8((IntPtr)cublasGetStatusString(status)) ?? $"cuBLAS status {status}");
    }
}
