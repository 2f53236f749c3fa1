using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Models;
using KvSharp.Tests.Reference;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>Cross-layer KV sharing (KVSharer): a layer reading an earlier layer's storage.</summary>
public class PagedKvCacheSharingTests
{
    private static readonly PagedKvCacheOptions F32Blocks = new() { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, BlockTokens = 8, MaxTokens = 64 };

    /// <summary>
    /// A 3-layer model whose layer 2 shares layer 0's KV: prefill, chunked prefill and decode equal a float64 forward
    /// in which layer 2's attention reads layer 0's keys (after RoPE) and values; the cache holds one layer less.
    /// </summary>
    [Fact]
    public void SharedLayer_ForwardEqualsFloat64ReferenceReadingTheSourceKv()
    {
        using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig("gqa4-halfsplit-untied"));
        Assert.Equal(3, model.Config.NumLayers);
        var oracle = new ReferenceTransformer(model.Config, ReferenceWeights.FromDictionary(model.Tensors))
        {
            KvSourceLayers = new Dictionary<int, int> { [2] = 0 },
        };
        var tokens = ReferenceModels.RandomTokens(30, model.Config.VocabSize);
        var expected = oracle.Forward(tokens);
        int vocab = model.Config.VocabSize;

        // The unshared oracle differs: the test can tell whether layer 2 really reads layer 0.
        var unshared = model.Reference.Forward(tokens);
        Assert.True(ReferenceCompare.MaxRelativeError(unshared[^1], ToFloat(expected[^1])) > 1e-2);

        foreach (int chunk in new[] { 512, 5 })
        {
            var engine = new Transformer(model.Weights) { PrefillChunk = chunk };
            using var cache = new PagedKvCache(model.Config, F32Blocks);
            cache.ShareLayer(2, 0);
            var all = engine.Forward(tokens.AsSpan(0, 24), cache, LogitsMode.All);
            for (int t = 0; t < 24; t++)
                AssertClose(expected[t], all.AsSpan(t * vocab, vocab), 1e-4, $"prefill in chunks of {chunk}, position {t}");
            for (int t = 24; t < tokens.Length; t++)
                AssertClose(expected[t], engine.Forward(tokens.AsSpan(t, 1), cache), 1e-4, $"decode {t}");

            using var full = new PagedKvCache(model.Config, F32Blocks);
            engine.Forward(tokens, full);
            Assert.Equal(full.ByteCount / 3, full.ByteCount - cache.ByteCount); // one of three equal layers less
            Assert.Equal(full.PoolLiveBytes / 3, full.PoolLiveBytes - cache.PoolLiveBytes);
            Assert.Equal(0, cache.BytesByLayerHead(2, 1));
            Assert.Equal(cache.Positions(0, 1), cache.Positions(2, 1));
        }
    }

    private static float[] ToFloat(double[] x) => x.Select(v => (float)v).ToArray();

    /// <summary>
    /// Direct use: a shared layer attends exactly as its source for the same queries, through eviction of the source's
    /// heads, truncation, appends and a fork; its own blocks go back to the pool when it starts sharing.
    /// </summary>
    [Fact]
    public void SharedLayer_FollowsItsSourceThroughEvictTruncateAndFork()
    {
        const int heads = 4, kvHeads = 2, d = 16, row = kvHeads * d, qRow = heads * d;
        var rng = new Random(12);
        using var cache = new PagedKvCache(3, heads, kvHeads, d, F32Blocks);
        void Append(PagedKvCache c, int n)
        {
            for (int l = 0; l < 3; l++) c.Append(l, Gaussians(rng, n * row), Gaussians(rng, n * row), n);
        }
        void AssertReadsSource(PagedKvCache c, int layer, int source, string where)
        {
            var q = Gaussians(rng, 3 * qRow);
            var expected = new float[3 * qRow]; var actual = new float[3 * qRow];
            c.Attend(source, q, 3, c.Length - 3, expected);
            c.Attend(layer, q, 3, c.Length - 3, actual);
            Assert.True(expected.AsSpan().SequenceEqual(actual), where);
        }
        Append(cache, 30);
        long live = cache.PoolLiveBlocks;
        cache.ShareLayer(1, 0);
        Assert.Equal(live * 2 / 3, cache.PoolLiveBlocks);
        Assert.Equal(0, cache.SharedLayerSource(1));
        Assert.Equal(-1, cache.SharedLayerSource(0));
        AssertReadsSource(cache, 1, 0, "after sharing");

        var before = new float[qRow];
        var q1 = Gaussians(rng, qRow);
        cache.Attend(1, q1, 1, 29, before);
        cache.Evict(0, 1, new HashSet<int> { 3, 4, 5, 28 });
        var after = new float[qRow];
        cache.Attend(1, q1, 1, 29, after);
        Assert.False(before.AsSpan().SequenceEqual(after)); // the reader sees the source's eviction
        AssertReadsSource(cache, 1, 0, "after evicting the source");

        var e = Assert.Throws<KvSharpException>(() => cache.Evict(1, 0, new bool[26]));
        Assert.Contains("shares layer 0", e.Message);
        e = Assert.Throws<KvSharpException>(() => cache.Requantize(1, 0, new bool[30], KvFormat.Int4, KvFormat.Int4));
        Assert.Contains("shares layer 0", e.Message);

        cache.Truncate(20);
        Append(cache, 7);
        AssertReadsSource(cache, 1, 0, "truncated and appended");
        using var fork = cache.Fork();
        Append(fork, 5);
        Assert.Equal(0, fork.SharedLayerSource(1));
        AssertReadsSource(fork, 1, 0, "fork");
        Assert.Equal(fork.Positions(0, 0), fork.Positions(1, 0));
    }

    /// <summary>Sources must be earlier layers; chains resolve to the root, also when the middle link is made later.</summary>
    [Fact]
    public void ShareLayer_ResolvesChainsAndRefusesLaterSources()
    {
        using var cache = new PagedKvCache(4, 2, 1, 8, F32Blocks);
        var e = Assert.Throws<KvSharpException>(() => cache.ShareLayer(1, 1));
        Assert.Contains("earlier layer", e.Message);
        Assert.Throws<KvSharpException>(() => cache.ShareLayer(1, 2));
        Assert.Throws<KvSharpException>(() => cache.ShareLayer(0, -1));
        cache.ShareLayer(3, 2);
        cache.ShareLayer(2, 1);
        Assert.Equal(1, cache.SharedLayerSource(3)); // moved with its source
        cache.ShareLayer(1, 0);
        Assert.Equal([-1, 0, 0, 0], Enumerable.Range(0, 4).Select(cache.SharedLayerSource));

        using var ahead = new PagedKvCache(2, 2, 1, 8, F32Blocks);
        ahead.Append(1, new float[8], new float[8], 1); // layer 1 ahead of its would-be source
        e = Assert.Throws<KvSharpException>(() => ahead.ShareLayer(1, 0));
        Assert.Contains("source only 0", e.Message);
    }
}
