using KvSharp.Compute.Cuda.Native;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>A cuBLAS handle bound to the device's stream, for the dense matrix products of prefill.</summary>
internal sealed unsafe class CudaBlas : IDisposable
{
    private readonly CudaDevice _device;
    private readonly IntPtr _handle;

    public CudaBlas(CudaDevice device)
    {
        _device = device;
        device.MakeCurrent();
        CublasApi.Check(CublasApi.cublasCreate(out _handle), "cublasCreate_v2");
        CublasApi.Check(CublasApi.cublasSetStream(_handle, device.Stream), "cublasSetStream_v2");
    }

    /// <summary>
    /// y[n, rows] = x[n, cols] · wᵀ for a row-major weight w[rows, cols]; x and w share the element type
    /// <paramref name="type"/> (a CublasApi.Data* code), y is float32, accumulation is float32.
    /// In cuBLAS's column-major terms: yᵀ (rows × n) = op_T(w as cols × rows) · xᵀ (cols × n).
    /// </summary>
    /// With <paramref name="accumulate"/>, y += the product (the residual add fused, as cuBLAS's beta = 1).
    public void MatMul(ulong w, ulong x, ulong y, int rows, int cols, int n, int type, bool accumulate = false)
    {
        float alpha = 1, beta = accumulate ? 1 : 0;
        CublasApi.Check(CublasApi.cublasGemmEx(_handle, CublasApi.OpT, CublasApi.OpN, rows, n, cols, &alpha,
            w, type, cols, x, type, cols, &beta, y, CublasApi.DataF32, rows, CublasApi.ComputeF32, CublasApi.GemmDefault), "cublasGemmEx");
    }

    public void Dispose()
    {
        _device.MakeCurrent();
        CublasApi.cublasDestroy(_handle);
    }
}
