using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>Eviction lowers the process's resident memory (the kernel's count), not only the cache's counters.</summary>
[Collection(ResidentMemoryCollection.Name)]
public class PagedKvCacheMemoryTests
{
    /// <summary>
    /// 128 MiB of F32 blocks (8 KV heads × 16384 tokens × 128 dims, 16 KiB blocks interleaved across heads in 1 MiB
    /// slabs), then per head either 90% of the tokens at random (every block is rebuilt: compaction) or every block
    /// but each 8th (the kept blocks stay where they are, one in eight in every slab, so no slab empties: only
    /// returning the freed blocks' pages inside live slabs can lower memory). Resident memory, read from
    /// /proc/self/statm, drops by at least 3/4 of what the pools freed, which is over 100 MiB.
    /// </summary>
    [Theory]
    [InlineData("random tokens")]
    [InlineData("whole blocks")]
    public void Eviction_LowersResidentMemory(string pattern)
    {
        if (!OperatingSystem.IsLinux()) return;
        const int kvHeads = 8, headDim = 128, tokens = 16384, chunk = 1024, row = kvHeads * headDim;
        var rng = new Random(17);
        using var cache = new PagedKvCache(1, kvHeads, kvHeads, headDim,
            new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = tokens });
        var k = new float[chunk * row]; var v = new float[chunk * row];
        for (int i = 0; i < k.Length; i++) { k[i] = rng.NextSingle() - 0.5f; v[i] = rng.NextSingle(); }
        for (int t = 0; t < tokens; t += chunk) cache.Append(0, k, v, chunk);
        Assert.Equal(128L << 20, cache.PoolPageBytesInUse);

        GC.Collect();
        long before = ResidentMemory.Bytes(), pagesBefore = cache.PoolPageBytesInUse, reserved = cache.PoolReservedBytes;
        for (int g = 0; g < kvHeads; g++)
        {
            var evict = pattern == "random tokens"
                ? Enumerable.Range(0, tokens).Select(_ => rng.Next(10) != 0).ToArray()
                : Enumerable.Range(0, tokens).Select(i => i / 32 % 8 != 0).ToArray();
            cache.Evict(0, g, evict);
        }
        GC.Collect();
        long after = ResidentMemory.Bytes(), freed = pagesBefore - cache.PoolPageBytesInUse;
        Assert.Equal(cache.PoolLiveBytes, cache.PoolPageBytesInUse); // 16 KiB blocks fill whole pages
        Assert.True(freed > 100L << 20, $"the pools freed only {freed >> 20} MiB of pages");
        Assert.True(before - after > freed * 3 / 4,
            $"{pattern}: the pools freed {freed >> 20} MiB of pages (slabs reserved: {reserved >> 20} → {cache.PoolReservedBytes >> 20} MiB) but resident memory fell by {(before - after) >> 20} MiB");
    }
}
