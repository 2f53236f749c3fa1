using KvSharp.GpuTests.Checks;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// VidKV blocks in the device paged cache: attention over uploaded mixed caches against float64 and the CPU cache's VidKV
/// attention, the transformer over an uploaded VidKV-pressed cache against the CPU engine, VidKV blocks encoded on the
/// device (the vidkv press) against the CPU codec byte for byte, and the refusals of what the device does not do with VidKV blocks. The checks live in tests/KvSharp.GpuTests (the GPU runner's code). Skipped without a GPU.
/// </summary>
public class CudaVidKvTests
{
    [CudaFact] public void AttentionOverVidKvBlocksMatchesCpu() => VidKvChecks.Attention();
    [CudaFact] public void TransformerOverUploadedVidKvCacheMatchesCpu() => VidKvChecks.TransformerMatchesCpu();
    [CudaFact] public void WhatTheDeviceDoesNotDoIsRefused() => VidKvChecks.Refusals();
    [CudaFact] public void VidKvEncodedOnTheDeviceMatchesTheCpuCodec() => VidKvChecks.EncodeMatchesCpu();
}
