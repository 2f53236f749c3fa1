using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// The paged attention kernels' shared-memory accounting (no GPU needed): the longest split the planner may pick fits the
/// 48 KB a launch gets without opting in, one block more would not, and the tensor-core kernel's shape rule.
/// </summary>
public class PagedAttentionSharedMemoryTests
{
    private const int Limit = 48 * 1024;

    [Theory]
    [InlineData(PagedAttentionKernel.LaneChannels)]
    [InlineData(PagedAttentionKernel.Wide)]
    [InlineData(PagedAttentionKernel.TensorCores)]
    [InlineData(PagedAttentionKernel.VidKv)]
    public void LongestSplitFitsTheLaunchLimit(PagedAttentionKernel kernel)
    {
        foreach (int group in new[] { 1, 2, 4, 8 })
            foreach (int headDim in new[] { 64, 128 })
                foreach (int blockTokens in new[] { 16, 32, 64 })
                {
                    int max = CudaPagedKernels.MaxChunkBlocks(group, headDim, blockTokens, kernel);
                    Assert.True(max >= 1, $"G{group} hd{headDim} {blockTokens} tokens: no split fits");
                    // Hand count: floats of the accumulators, block offsets, scores, the wide kernel's query copies and the
                    // tensor-core kernel's descriptors (16 bytes a block), the VidKV kernel's per-warp folded and transformed queries; 512 bytes stay free for the static variables.
                    int Bytes(int chunk) => 4 * (group * headDim + chunk + 1 + group * chunk * blockTokens
                        + (kernel == PagedAttentionKernel.Wide ? 5 * (group * headDim + headDim / 2) : 0)
                        + (kernel == PagedAttentionKernel.TensorCores ? 4 * chunk : 0)
                        + (kernel == PagedAttentionKernel.VidKv ? 4 * group * (headDim + blockTokens) : 0));
                    Assert.Equal(Bytes(max), CudaPagedKernels.SharedBytes(group, headDim, blockTokens, max, kernel));
                    Assert.True(Bytes(max) <= Limit - 512, $"G{group} hd{headDim}: {Bytes(max)} bytes");
                    Assert.True(Bytes(max + 1) > Limit - 512, $"G{group} hd{headDim}: {max + 1} blocks would fit too");
                }
    }

    [Fact]
    public void TensorCoresNeedHeadDim128AndValueGroupsOf32To128()
    {
        Assert.True(CudaPagedKernels.SupportsTensorCores(4, 128, 32));
        Assert.True(CudaPagedKernels.SupportsTensorCores(8, 128, 128));
        Assert.False(CudaPagedKernels.SupportsTensorCores(4, 64, 32));
        Assert.False(CudaPagedKernels.SupportsTensorCores(4, 128, 16));
        Assert.False(CudaPagedKernels.SupportsTensorCores(3, 128, 32));
    }
}
