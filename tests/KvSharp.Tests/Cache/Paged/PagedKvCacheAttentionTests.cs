using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>Attention of the paged cache against the plain float cache and a float64 attention over decoded blocks.</summary>
public class PagedKvCacheAttentionTests
{
    public static IEnumerable<object[]> Shapes() =>
        from g in new[] { 1, 3, 4 } from d in new[] { 64, 128 } select new object[] { g, d };

    /// <summary>F32 blocks: random appends (chunked prefill with causal masking, then decode) equal FullPrecisionKvCache.</summary>
    [Theory]
    [MemberData(nameof(Shapes))]
    public void F32_EqualsFullPrecisionCache(int group, int headDim)
    {
        const int layers = 2, kvHeads = 2;
        int heads = kvHeads * group, row = kvHeads * headDim, qRow = heads * headDim;
        var rng = new Random(group * 1000 + headDim);
        using var paged = new PagedKvCache(layers, heads, kvHeads, headDim,
            new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = 200 });
        using var full = new FullPrecisionKvCache(layers, heads, kvHeads, headDim, 200);
        int[] chunks = [7, 33, 1, 20, 1, 1, 40, 3];
        foreach (int n in chunks)
        {
            int first = paged.Length;
            for (int l = 0; l < layers; l++)
            {
                var k = Gaussians(rng, n * row); var v = Gaussians(rng, n * row); var q = Gaussians(rng, n * qRow, 2);
                paged.Append(l, k, v, n); full.Append(l, k, v, n);
                var expected = new float[n * qRow]; var actual = new float[n * qRow];
                full.Attend(l, q, n, first, expected);
                paged.Attend(l, q, n, first, actual);
                AssertClose(expected, actual, 1e-5, $"chunk of {n} at {first}, layer {l}");
            }
        }
        Assert.Equal(full.Length, paged.Length);
    }

    public static IEnumerable<object[]> Formats() =>
        from f in new[] { KvFormat.F16, KvFormat.BF16, KvFormat.Fp8E4M3, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary }
        select new object[] { f };

    /// <summary>
    /// Each format (keys per channel, values per token): attention equals float64 attention over the BlockCodec
    /// round trip of every full block plus the float tail, for decode and chunked-prefill queries.
    /// </summary>
    [Theory]
    [MemberData(nameof(Formats))]
    public void Format_EqualsFloat64OverDecodedBlocks(KvFormat format) => AssertEqualsDecoded(format, format);

    /// <summary>Keys and values in different formats (separate pools when their block sizes differ).</summary>
    [Theory]
    [InlineData(KvFormat.Int2, KvFormat.Int4)]
    [InlineData(KvFormat.Fp8E4M3, KvFormat.Ternary)]
    [InlineData(KvFormat.Binary, KvFormat.F16)]
    public void MixedFormats_EqualFloat64OverDecodedBlocks(KvFormat keys, KvFormat values) => AssertEqualsDecoded(keys, values);

    private static void AssertEqualsDecoded(KvFormat keyFormat, KvFormat valueFormat)
    {
        const int layers = 1, kvHeads = 2, group = 3, headDim = 64, heads = kvHeads * group;
        int row = kvHeads * headDim, qRow = heads * headDim;
        var rng = new Random((int)keyFormat * 10 + (int)valueFormat + 11);
        var options = new PagedKvCacheOptions { KeyFormat = keyFormat, ValueFormat = valueFormat, MaxTokens = 200 };
        using var paged = new PagedKvCache(layers, heads, kvHeads, headDim, options);
        var reference = new ReferenceKv(layers, heads, kvHeads, headDim);
        foreach (int n in new[] { 50, 30, 1, 19 }) // 100 tokens: 3 full blocks, 4 in the tail
        {
            var k = Gaussians(rng, n * row); var v = Gaussians(rng, n * row);
            paged.Append(0, k, v, n); reference.Append(0, k, v, n);
        }
        reference.RoundTripBlocks(BlockLayout.ForKeys(keyFormat, headDim), BlockLayout.ForValues(valueFormat, headDim), 3);
        foreach (var (first, n) in new[] { (99, 1), (60, 40), (0, 5) })
        {
            var q = Gaussians(rng, n * qRow, 2);
            var actual = new float[n * qRow];
            paged.Attend(0, q, n, first, actual);
            AssertClose(reference.Attend(0, q, n, first), actual, 1e-4, $"keys {keyFormat}, values {valueFormat}, queries {first}+{n}");
        }
    }

    /// <summary>The residual: with R = 64 and 32-token blocks, 63 tokens stay float and the 64th encodes two blocks.</summary>
    [Fact]
    public void Residual_EncodesOnceRTokensAreCollected()
    {
        const int headDim = 16;
        var rng = new Random(5);
        using var paged = new PagedKvCache(1, 2, 1, headDim,
            new PagedKvCacheOptions { KeyFormat = KvFormat.Int4, ValueFormat = KvFormat.Int4, ResidualTokens = 64, MaxTokens = 100 });
        var reference = new ReferenceKv(1, 2, 1, headDim);
        var k = Gaussians(rng, 64 * headDim); var v = Gaussians(rng, 64 * headDim);
        paged.Append(0, k.AsSpan(0, 63 * headDim), v.AsSpan(0, 63 * headDim), 63);
        Assert.Equal(2L * 63 * headDim * 4, paged.ByteCount); // all float
        paged.Append(0, k.AsSpan(63 * headDim), v.AsSpan(63 * headDim), 1);
        reference.Append(0, k, v, 64);
        var kl = BlockLayout.ForKeys(KvFormat.Int4, headDim); var vl = BlockLayout.ForValues(KvFormat.Int4, headDim);
        Assert.Equal(2L * (kl.ByteSize + vl.ByteSize), paged.ByteCount);
        reference.RoundTripBlocks(kl, vl, 2);
        var q = Gaussians(rng, 2 * headDim);
        var actual = new float[2 * headDim];
        paged.Attend(0, q, 1, 63, actual);
        AssertClose(reference.Attend(0, q, 1, 63), actual, 1e-4, "after the residual flush");
    }

    /// <summary>
    /// Accounting by hand: head dim 32, 32-token blocks. An Int2 per-channel key block is 32·32·2/8 = 256 code bytes
    /// + 32 channels × (scale, min) × 2 bytes = 384; an Int4 per-token value block is 512 + 32 tokens × 4 = 640.
    /// 40 tokens per head = one block pair + 8 float tail tokens (8·32·4 bytes each of K and V).
    /// </summary>
    [Fact]
    public void Accounting_CountsExactBytes()
    {
        using var cache = new PagedKvCache(1, 4, 2, 32, new PagedKvCacheOptions { KeyFormat = KvFormat.Int2, ValueFormat = KvFormat.Int4, MaxTokens = 64 });
        var rng = new Random(2);
        cache.Append(0, Gaussians(rng, 40 * 64), Gaussians(rng, 40 * 64), 40);
        Assert.Equal(2 * (384 + 640 + 2048), cache.ByteCount);
        Assert.Equal(384 + 640 + 2048, cache.BytesByLayerHead(0, 1));
        var byFormat = cache.BytesByFormat();
        Assert.Equal(768, byFormat[KvFormat.Int2]);
        Assert.Equal(1280, byFormat[KvFormat.Int4]);
        Assert.Equal(4096, byFormat[KvFormat.F32]);
        Assert.Equal(2.0 * 40 * 2 * 32 * 2 / 6144, cache.CompressionRatio, 12);
        Assert.Equal(4, cache.PoolLiveBlocks);
        cache.Dispose();
        Assert.Throws<ObjectDisposedException>(() => cache.Append(0, new float[64], new float[64], 1));
    }

    [Fact]
    public void BadOptions_NameTheOption()
    {
        var e = Assert.Throws<KvSharpException>(() => new PagedKvCache(1, 2, 1, 12, new PagedKvCacheOptions()));
        Assert.Contains("head dimension", e.Message);
        e = Assert.Throws<KvSharpException>(() => new PagedKvCache(1, 2, 1, 16, new PagedKvCacheOptions { BlockTokens = 0 }));
        Assert.Contains("BlockTokens", e.Message);
        using var c = new PagedKvCache(1, 2, 1, 16, new PagedKvCacheOptions { MaxTokens = 4 });
        e = Assert.Throws<KvSharpException>(() => c.Append(0, new float[5 * 16], new float[5 * 16], 5));
        Assert.Contains("MaxTokens", e.Message);
    }
}
