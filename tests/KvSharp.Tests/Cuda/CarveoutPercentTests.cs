using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// The products' shared-memory carve-out (no GPU needed): the smallest percentage of a multiprocessor's shared memory that
/// still holds every resident block, so that the rest of the L1/shared array stays L1.
/// </summary>
public class CarveoutPercentTests
{
    [Theory]
    // The tensor-core product on an H100: 3 blocks of 9216 bytes + 1 KB reserved each = 30720 of 233472 bytes = 13.16% -> 14.
    [InlineData(3, 9216, 1024, 233472, 14)]
    // A CUDA-core product with no shared memory: only the reservation, 8 blocks = 8 KB = 3.5% -> 4.
    [InlineData(8, 0, 1024, 233472, 4)]
    // Exactly a whole percentage: 2 blocks of 1311 + 1024 = 4670 of 233500 bytes = 2.0% -> 2, not 3.
    [InlineData(2, 1311, 1024, 233500, 2)]
    // More than the multiprocessor holds is clamped to the largest carve-out.
    [InlineData(8, 48 * 1024, 1024, 233472, 100)]
    // A kernel the occupancy query gives 0 blocks still gets room for one.
    [InlineData(0, 9216, 1024, 233472, 5)]
    public void HoldsTheResidentBlocksAndNoMore(int blocks, int staticShared, int reserved, int maxShared, int expected)
    {
        int percent = CudaFunction.CarveoutPercent(blocks, staticShared, reserved, maxShared);
        Assert.Equal(expected, percent);
        // Independent of the formula's rounding: the carve-out holds the blocks, one percent less would not (below 100%).
        long need = (long)Math.Max(1, blocks) * (staticShared + reserved);
        if (percent < 100)
        {
            Assert.True(percent * (long)maxShared >= need * 100, "the carve-out does not hold the blocks");
            Assert.True((percent - 1) * (long)maxShared < need * 100, "a smaller carve-out would hold them too");
        }
    }
}
