using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary>The L2 prefetch ranges the attention launches take (no GPU needed): what the bulk prefetch accepts.</summary>
public class L2PrefetchTests
{
    [Fact]
    public void SizesAreRoundedDownToTheBulkPrefetchUnit()
    {
        var p = new L2Prefetch(0x1000, 33_554_447, 0x2000, 15);
        Assert.Equal(33_554_432, p.FirstBytes); // 16 · 2,097,152
        Assert.Equal(0, p.SecondBytes);
        Assert.Equal(0x1000UL, p.First);
        Assert.Equal(0x2000UL, p.Second);
    }

    [Fact]
    public void DefaultAsksForNothing()
    {
        var p = default(L2Prefetch);
        Assert.Equal(0, p.FirstBytes + p.SecondBytes);
    }

    [Fact]
    public void MisalignedStartOrNegativeSizeIsRefused()
    {
        Assert.Throws<ArgumentException>(() => new L2Prefetch(0x1008, 64));
        Assert.Throws<ArgumentException>(() => new L2Prefetch(0x1000, 64, 0x2004, 64));
        Assert.Throws<ArgumentOutOfRangeException>(() => new L2Prefetch(0x1000, -16));
    }
}
