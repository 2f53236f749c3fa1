using KvSharp.GpuTests.Checks;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// Saved KV caches on the device (<c>--load-cache</c> / <c>--save-cache</c> with <c>--device cuda</c>): a loaded cache continues
/// on the device as the device's own prefill and the CPU engine do; a device cache read back keeps its blocks and positions.
/// The checks live in tests/KvSharp.GpuTests (the GPU runner executes the same code). Skipped without a GPU.
/// </summary>
public class CudaCacheFileTests
{
    [CudaFact] public void LoadedCacheDecodesOnDevice() => CacheFileChecks.LoadedCacheDecodesOnDevice();
    [CudaFact] public void DownloadedCacheMatchesDevice() => CacheFileChecks.DownloadedCacheMatchesDevice();
}
