using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>The paged cache storing VidKV blocks: attention, exact byte accounting, save and load.</summary>
public class PagedKvCacheVidKvTests
{
    private const int Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 64, Row = KvHeads * HeadDim, QRow = Heads * HeadDim;

    [Fact]
    public void VidKvCache_AttendsLikeFloat64OverRoundTrips_CountsExactBytes_AndSurvivesSaveLoad()
    {
        var rng = new Random(3);
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.VidKvKey, ValueFormat = KvFormat.VidKvValue, MaxTokens = 200 };
        using var cache = new PagedKvCache(Layers, Heads, KvHeads, HeadDim, options);
        var reference = new ReferenceKv(Layers, Heads, KvHeads, HeadDim);
        for (int l = 0; l < Layers; l++)
        {
            var k = Gaussians(rng, 100 * Row); var v = Gaussians(rng, 100 * Row);
            cache.Append(l, k, v, 100); reference.Append(l, k, v, 100);
        }
        var kl = BlockLayout.ForKeys(KvFormat.VidKvKey, HeadDim);
        var vl = BlockLayout.ForValues(KvFormat.VidKvValue, HeadDim);
        reference.RoundTripBlocks(kl, vl, 3); // 3 blocks of 32, a 4-token float tail
        // 648 + 614 bytes per block pair (VidKvBlockTests), 3 pairs and 4 float32 tail tokens per (layer, KV head).
        Assert.Equal(648 + 614, kl.ByteSize + vl.ByteSize);
        Assert.Equal(Layers * KvHeads * (3L * (648 + 614) + 2 * 4 * HeadDim * 4), cache.ByteCount);

        foreach (var (first, n) in new[] { (99, 1), (60, 40), (0, 9) })
            for (int l = 0; l < Layers; l++)
            {
                var q = Gaussians(rng, n * QRow, 2);
                var actual = new float[n * QRow];
                cache.Attend(l, q, n, first, actual);
                AssertClose(reference.Attend(l, q, n, first), actual, 1e-4, $"layer {l}, queries {first}+{n}");
            }

        using var dir = new TempDir();
        string path = dir.File("vidkv.kvc");
        cache.Save(path, "model");
        using var loaded = PagedKvCache.Load(path, "model");
        Assert.Equal(cache.ByteCount, loaded.ByteCount);
        Assert.Equal(cache.BytesByFormat().OrderBy(p => p.Key), loaded.BytesByFormat().OrderBy(p => p.Key));
        for (int l = 0; l < Layers; l++)
        {
            var q = Gaussians(rng, 40 * QRow);
            var a = new float[40 * QRow]; var b = new float[40 * QRow];
            cache.Attend(l, q, 40, 60, a);
            loaded.Attend(l, q, 40, 60, b);
            Assert.True(a.AsSpan().SequenceEqual(b), $"layer {l}: the loaded cache attends differently");
        }
    }
}
