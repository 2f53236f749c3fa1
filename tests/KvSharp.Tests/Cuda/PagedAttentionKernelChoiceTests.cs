using KvSharp.Cache.Blocks;
using KvSharp.Compute.Cuda.Model;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// Which attention kernel a new device paged cache starts with (no GPU needed): the rule docs/cuda.md states from the H100
/// measurements, case by case.
/// </summary>
public class PagedAttentionKernelChoiceTests
{
    [Theory]
    // Llama-3.1-8B's shape (group 4, head dim 128, value groups of 32, 32-token blocks): pipelined except for INT8 keys.
    [InlineData(4, 128, 32, 32, KvFormat.F16, PagedAttentionKernel.Pipelined)]
    [InlineData(4, 128, 32, 32, KvFormat.Int2, PagedAttentionKernel.Pipelined)]
    [InlineData(4, 128, 32, 32, KvFormat.Int4, PagedAttentionKernel.Pipelined)]
    [InlineData(4, 128, 32, 32, KvFormat.Fp8E4M3, PagedAttentionKernel.Pipelined)]
    [InlineData(4, 128, 32, 32, KvFormat.Int8, PagedAttentionKernel.TensorCores)]
    // Blocks of 64 tokens: the pipelined kernel's rings take at most 32; the tensor-core kernel reads them.
    [InlineData(4, 128, 32, 64, KvFormat.Int2, PagedAttentionKernel.TensorCores)]
    // Head dimension 64: no tensor-core kernel; 16-byte loads for keys of at most 4 bits, lane channels otherwise.
    [InlineData(4, 64, 32, 32, KvFormat.Int4, PagedAttentionKernel.Wide)]
    [InlineData(4, 64, 32, 32, KvFormat.F16, PagedAttentionKernel.LaneChannels)]
    public void NewCacheStartsWithTheMeasuredFastestKernel(int group, int headDim, int valueGroup, int blockTokens, KvFormat keys, PagedAttentionKernel expected)
        => Assert.Equal(expected, CudaPagedKvCache.DefaultAttentionKernel(group, headDim, valueGroup, blockTokens, keys));
}
