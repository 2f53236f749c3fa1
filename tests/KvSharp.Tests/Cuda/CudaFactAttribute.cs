using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// A fact that needs an NVIDIA GPU: skipped, with the reason in the test report, where CUDA is unavailable
/// (CI runs on CPU-only machines; scripts/gpu-tests.sh runs the same checks on a GPU machine).
/// </summary>
public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute()
    {
        if (CudaDevice.UnavailableReason is { } reason) Skip = $"CUDA unavailable: {reason}";
    }
}
