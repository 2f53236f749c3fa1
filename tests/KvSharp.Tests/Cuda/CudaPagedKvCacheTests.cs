using KvSharp.GpuTests.Checks;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// The device paged KV cache (every block format it supports, mixed formats, per-head lengths; device appends against the
/// CPU codec's bytes, the append fused into the QKV product against the separate one; device eviction against the CPU eviction's kept tokens; the transformer over it against the CPU
/// engine; several sequences in one cache against each alone; VidKV blocks in <see cref="CudaVidKvTests"/>). The checks live in tests/KvSharp.GpuTests so the
/// self-contained GPU runner executes the very same code. Skipped without a GPU.
/// </summary>
public class CudaPagedKvCacheTests
{
    [CudaFact] public void AttentionOverEveryFormat() => PagedChecks.Attention();
    [CudaFact] public void DeviceAppendEncodesAsTheCpuCodec() => PagedChecks.AppendMatchesCpuCodec();
    [CudaFact] public void BatchAppendEncodesAsTheCpuCodec() => PagedChecks.BatchAppendMatchesCpuCodec();
    [CudaFact] public void SplitBatchAppendMatchesOneBlockAHead() => PagedChecks.BatchAppendSplitMatchesOneBlock();
    [CudaFact] public void SplitBatchAppendReportsAFullPoolAndTable() => PagedChecks.SplitBatchAppendReportsFullPoolAndTable();
    [CudaFact] public void DeviceEvictKeepsTheCpuEvictsTokens() => PagedChecks.EvictMatchesCpu();
    [CudaFact] public void TransformerOverPagedCacheMatchesCpu() => PagedChecks.TransformerMatchesCpu();
    [CudaFact] public void AppendFusedIntoQkvMatchesSeparateAppend() => PagedChecks.FusedAppendMatchesUnfused();
    [CudaFact] public void AppendFusedIntoQkvReportsAFullPool() => PagedChecks.FusedAppendReportsFullPool();
    [CudaFact] public void ResidualFillsUnderPipelinedAttentionMatchCpu() => AppendStressChecks.FillsMatchCpu();
    [CudaFact] public void BatchAttentionMatchesEachSequence() => PagedBatchChecks.Attention();
    [CudaFact] public void BatchDecodeMatchesEachSequenceAlone() => PagedBatchChecks.Decode();
    [CudaFact] public void BatchAppendFoldedIntoProductsMatchesItsOwnLaunch() => PagedBatchChecks.FoldedAppend();
    [CudaFact] public void SnapKvOnOneSequenceOfABatchMatchesCpu() => PagedBatchChecks.SnapKvOneSequence();
}
