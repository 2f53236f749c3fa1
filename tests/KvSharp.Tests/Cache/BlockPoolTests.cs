using KvSharp.Cache.Pool;

namespace KvSharp.Tests.Cache;

[Collection(ResidentMemoryCollection.Name)]
public unsafe class BlockPoolTests
{
    [Fact]
    public void BlocksAreZeroedDistinctAndReusedAfterRelease()
    {
        using var pool = new BlockPool(1000);
        Assert.Equal(1024, pool.BlockBytes);
        var ids = Enumerable.Range(0, 3000).Select(_ => pool.Allocate()).ToList();
        Assert.Equal(3000, pool.LiveBlocks);
        Assert.Equal(ids.Count, ids.Select(i => i.Value).Distinct().Count());
        for (int i = 0; i < ids.Count; i++) pool.Span(ids[i]).Fill((byte)i);
        for (int i = 0; i < ids.Count; i++) Assert.All(pool.Span(ids[i]).ToArray(), b => Assert.Equal((byte)i, b));
        pool.Release(ids[5]);
        var again = pool.Allocate();
        Assert.All(pool.Span(again).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void SharedBlockSurvivesUntilLastRelease()
    {
        using var pool = new BlockPool(64);
        var id = pool.Allocate();
        pool.Retain(id);
        Assert.Equal(2, pool.RefCount(id));
        pool.Release(id);
        Assert.Equal(1, pool.RefCount(id));
        pool.Release(id);
        Assert.Equal(0, pool.LiveBlocks);
        Assert.Throws<InvalidOperationException>(() => pool.Release(id));
    }

    [Fact]
    public void FreeingBlocksReturnsMemoryToTheOperatingSystem()
    {
        if (!OperatingSystem.IsLinux()) return;
        using var pool = new BlockPool(4096);
        long before = ResidentMemory.Bytes();
        var ids = new List<BlockId>();
        for (int i = 0; i < 64 * 1024; i++) // 256 MiB
        {
            var id = pool.Allocate();
            pool.Span(id).Fill(1); // touch every page
            ids.Add(id);
        }
        long full = ResidentMemory.Bytes();
        Assert.True(full - before > 200L << 20, $"resident grew by only {(full - before) >> 20} MiB");
        foreach (var id in ids) pool.Release(id);
        long after = ResidentMemory.Bytes();
        Assert.True(full - after > 200L << 20, $"releasing 256 MiB of blocks lowered resident memory by only {(full - after) >> 20} MiB");
        Assert.Equal(0, pool.ReservedBytes);
    }

    /// <summary>
    /// 1 KiB blocks, four to a 4 KiB page: keeping every 8th block leaves a live block on every other page, so half the
    /// pages are in use (their neighbours went back to the OS) though every slab still holds blocks.
    /// </summary>
    [Fact]
    public void PagesWithoutLiveBlocks_AreNotCountedInUse()
    {
        if (Environment.SystemPageSize != 4096) return;
        using var pool = new BlockPool(1024);
        var ids = Enumerable.Range(0, 4 * pool.BlocksPerSlab).Select(_ => pool.Allocate()).ToList();
        Assert.Equal(4L << 20, pool.PageBytesInUse);
        for (int i = 0; i < ids.Count; i++) if (i % 8 != 0) pool.Release(ids[i]);
        Assert.Equal(2L << 20, pool.PageBytesInUse);
        Assert.Equal(4L << 20, pool.ReservedBytes);
        var again = pool.Allocate(); // lands on a discarded page: zeroed, counted again
        Assert.All(pool.Span(again).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal((2L << 20) + 4096, pool.PageBytesInUse);
    }
}
