using KvSharp.Compute.Cuda;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.GpuTests.Checks;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// The CUDA backend's kernels and forward pass against float64 references and the CPU engine (the checks live in
/// tests/KvSharp.GpuTests so the self-contained GPU runner executes the very same code). Skipped without a GPU.
/// </summary>
public class CudaBackendTests
{
    [CudaFact] public void RmsNorm() => KernelChecks.RmsNorm();
    [CudaFact] public void QkvRopeAppend() => KernelChecks.QkvRopeAppend();
    [CudaFact] public void Elementwise() => KernelChecks.Elementwise();
    [CudaFact] public void Embedding() => KernelChecks.Embedding();
    [CudaFact] public void Gemv() => KernelChecks.Gemv();
    [CudaFact] public void GemvNarrowActivations() => KernelChecks.GemvNarrow();
    [CudaFact] public void GemvQkvRope() => KernelChecks.GemvQkvRope();
    [CudaFact] public void GemvArgMax() => KernelChecks.GemvArgMax();
    [CudaFact] public void CublasGemm() => KernelChecks.CublasGemm();
    [CudaFact] public void Attention() => KernelChecks.Attention();
    [CudaFact] public void FlashPrefill() => KernelChecks.FlashPrefill();
    [CudaFact] public void ArgMax() => KernelChecks.ArgMax();
    [CudaFact] public void SamplingMatchesReference() => SamplingChecks.DeviceMatchesReference();
    [CudaFact] public void QwenShapedDummyMatchesCpu() => ModelChecks.QwenShapedDummy();
    [CudaFact] public void LlamaShapedDummyMatchesCpu() => ModelChecks.LlamaShapedDummy();
    [CudaFact] public void BatchDecodeMatchesSingle() => ModelChecks.BatchDecode();
    [CudaFact] public void Stories260KMatchesCpu() => ModelChecks.Stories260K(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
    [CudaFact] public void SampledGraphMatchesCpu() => ModelChecks.SampledGraphMatchesCpu();

    [CudaFact] public void Stories260KSampledMatchesCpu() => ModelChecks.Stories260KSampled(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));

    /// <summary>Without a GPU, opening a device is one clear "CUDA unavailable" error (the CPU backend stays the default).</summary>
    [Fact]
    public void OpenWithoutGpu_SaysCudaUnavailable()
    {
        if (CudaDevice.IsAvailable) return; // covered by the checks above on a GPU machine
        var e = Assert.Throws<CudaException>(() => CudaDevice.Open());
        Assert.StartsWith("CUDA unavailable: ", e.Message);
        Assert.IsAssignableFrom<KvSharpException>(e);
    }
}
