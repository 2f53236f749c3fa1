using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// The products' shared-memory carve-out (no GPU needed): the smallest percentage of a multiprocessor's shared memory that
/// still holds every resident block, so that the rest of the L1/shared array stays L1.
/// </summary>
public class CarveoutPercentTests
{
    [Theory]
    // The tensor-core products on an H100 (NVRTC 12.4's static shared memory): 3 blocks of 8192 bytes (8704 with the fused
    // norm) + 1 KB reserved each = 27,648 (29,184) of 233,472 bytes = 11.8% (12.5%) -> 12 (13).
    [InlineData(3, 8192, 1024, 233472, 12)]
    [InlineData(3, 8704, 1024, 233472, 13)]
    // A CUDA-core product with no shared memory: only the reservation, 8 blocks = 8 KB = 3.5% -> 4.
    [InlineData(8, 0, 1024, 233472, 4)]
    // Exactly a whole percentage: 2 blocks of 1280 + 1024 = 4608 of 230400 bytes = 2.0% -> 2, not 3.
    [InlineData(2, 1280, 1024, 230400, 2)]
    // Shared memory is allocated in 128-byte units: 8 blocks of 129 + 1024 bytes take 8 x 1280 = 10,240 (4.4% -> 5), not
    // 8 x 1153 = 9224 (3.95% -> 4, which holds only 7 of them).
    [InlineData(8, 129, 1024, 233472, 5)]
    // More than the multiprocessor holds is clamped to the largest carve-out.
    [InlineData(8, 48 * 1024, 1024, 233472, 100)]
    // A kernel the occupancy query gives 0 blocks still gets room for one.
    [InlineData(0, 9216, 1024, 233472, 5)]
    public void HoldsTheResidentBlocksAndNoMore(int blocks, int staticShared, int reserved, int maxShared, int expected)
    {
        int percent = CudaFunction.CarveoutPercent(blocks, staticShared, reserved, maxShared);
        Assert.Equal(expected, percent);
        // Independent of the formula's rounding: the bytes the driver's occupancy rule gives the carve-out (percent of the
        // largest, rounded down) hold the blocks, each allocated in whole 128-byte units; one percent less would not.
        long perBlock = (long)Math.Ceiling((staticShared + reserved) / 128.0) * 128;
        long need = Math.Max(1, blocks) * perBlock;
        if (percent < 100)
        {
            Assert.True(percent * (long)maxShared / 100 >= need, "the carve-out does not hold the blocks");
            Assert.True((percent - 1) * (long)maxShared / 100 < need, "a smaller carve-out would hold them too");
        }
    }
}
