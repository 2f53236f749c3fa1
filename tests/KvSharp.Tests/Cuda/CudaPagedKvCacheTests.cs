using KvSharp.GpuTests.Checks;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// The device paged KV cache (every block format, mixed formats, per-head lengths; device append and eviction against the
/// CPU codec's bytes; the transformer over it against the CPU engine). The checks live in tests/KvSharp.GpuTests so the
/// self-contained GPU runner executes the very same code. Skipped without a GPU.
/// </summary>
public class CudaPagedKvCacheTests
{
    [CudaFact] public void AttentionOverEveryFormat() => PagedChecks.Attention();
    [CudaFact] public void DeviceAppendEncodesAsTheCpuCodec() => PagedChecks.AppendMatchesCpuCodec();
    [CudaFact] public void DeviceEvictMatchesCpuEvict() => PagedChecks.EvictMatchesCpu();
    [CudaFact] public void TransformerOverPagedCacheMatchesCpu() => PagedChecks.TransformerMatchesCpu();
}
