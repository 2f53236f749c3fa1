using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>Mixed precision by token: re-quantizing chosen tokens of a head, against BlockCodec round trips and hand-counted bytes.</summary>
public class PagedKvCacheRequantizeTests
{
    private const int HeadDim = 32, KvHeads = 2, Heads = 4, Row = KvHeads * HeadDim, QRow = Heads * HeadDim;

    private static BlockLayout K(KvFormat f) => BlockLayout.ForKeys(f, HeadDim);
    private static BlockLayout V(KvFormat f) => BlockLayout.ForValues(f, HeadDim);
    private static long Pair(KvFormat keys, KvFormat values) => K(keys).ByteSize + V(values).ByteSize;
    private static long Tail(int tokens) => 2L * tokens * HeadDim * sizeof(float);

    /// <summary>An F16 cache of <paramref name="tokens"/> tokens whose inputs F16 stores exactly (so the reference needs no codec for them).</summary>
    private static (PagedKvCache Cache, ReferenceKv Reference) Build(Random rng, int tokens)
    {
        var cache = new PagedKvCache(1, Heads, KvHeads, HeadDim, new PagedKvCacheOptions { MaxTokens = 400 });
        var reference = new ReferenceKv(1, Heads, KvHeads, HeadDim);
        var k = Representable(Gaussians(rng, tokens * Row), KvFormat.F16, HeadDim);
        var v = Representable(Gaussians(rng, tokens * Row), KvFormat.F16, HeadDim);
        cache.Append(0, k, v, tokens); reference.Append(0, k, v, tokens);
        return (cache, reference);
    }

    private static bool[] Flags(int n, Func<int, bool> select) => Enumerable.Range(0, n).Select(select).ToArray();

    private static void AssertAttention(PagedKvCache cache, ReferenceKv reference, Random rng, string where)
    {
        foreach (var (first, n) in new[] { (cache.Length - 1, 1), (cache.Length - 40, 40), (0, 9) })
        {
            var q = Gaussians(rng, n * QRow, 2);
            var actual = new float[n * QRow];
            cache.Attend(0, q, n, first, actual);
            AssertClose(reference.Attend(0, q, n, first), actual, 1e-4, $"{where}, queries {first}+{n}");
        }
    }

    /// <summary>
    /// 150 F16 tokens per head (4 blocks + 22 in the tail). Head 0: block 1 → Int2, tokens 70..85 (inside block 2) →
    /// Int4 keys / Int8 values, tail tokens 130..135 → binary keys / ternary values. Block 2 is regrouped by format: its
    /// 16 F16 tokens (64..69, 86..95) in one F16 block, the 16 selected in one Int4/Int8 block; the binary/ternary tokens
    /// leave the tail (16 tokens stay). Head 1: every third token → Int8 keys / FP8 values, scattered over blocks and tail:
    /// the 50 selected tokens are packed into 2 Int8/FP8 blocks (32 + 18, ascending positions), the 85 other block
    /// tokens into 3 F16 blocks (32 + 32 + 21), 15 tail tokens stay. Attention equals float64 attention over each
    /// block's BlockCodec round trip; reads return every token in position order.
    /// </summary>
    [Fact]
    public void MixedFormatsInOneHead_AttentionEqualsFloat64OverDecodedBlocks()
    {
        var rng = new Random(101);
        var (cache, reference) = Build(rng, 150);
        using var _ = cache;
        cache.Requantize(0, 0, Flags(150, p => p is >= 32 and < 64), KvFormat.Int2, KvFormat.Int2);
        reference.RoundTripRun(0, 0, 32, 32, K(KvFormat.Int2), V(KvFormat.Int2));
        cache.Requantize(0, 0, Flags(150, p => p is >= 70 and < 86), KvFormat.Int4, KvFormat.Int8);
        reference.RoundTripRun(0, 0, 70, 16, K(KvFormat.Int4), V(KvFormat.Int8));
        cache.Requantize(0, 0, Flags(150, p => p is >= 130 and < 136), KvFormat.Binary, KvFormat.Ternary);
        reference.RoundTripRun(0, 0, 130, 6, K(KvFormat.Binary), V(KvFormat.Ternary));
        cache.Requantize(0, 1, Flags(150, p => p % 3 == 0), KvFormat.Int8, KvFormat.Fp8E4M3);
        var third = Enumerable.Range(0, 50).Select(i => 3 * i).ToArray();
        reference.RoundTripSet(0, 1, third[..32], K(KvFormat.Int8), V(KvFormat.Fp8E4M3));
        reference.RoundTripSet(0, 1, third[32..], K(KvFormat.Int8), V(KvFormat.Fp8E4M3));

        long f16 = Pair(KvFormat.F16, KvFormat.F16);
        long head0 = 3 * f16 + Pair(KvFormat.Int2, KvFormat.Int2) + Pair(KvFormat.Int4, KvFormat.Int8)
            + Pair(KvFormat.Binary, KvFormat.Ternary) + Tail(16);
        long head1 = 2 * Pair(KvFormat.Int8, KvFormat.Fp8E4M3) + 3 * f16 + Tail(15);
        Assert.Equal(head0, cache.BytesByLayerHead(0, 0));
        Assert.Equal(head1, cache.BytesByLayerHead(0, 1));
        Assert.Equal(head0 + head1, cache.ByteCount);
        var byFormat = cache.BytesByFormat();
        Assert.Equal(6 * f16, byFormat[KvFormat.F16]);
        Assert.Equal(Tail(31), byFormat[KvFormat.F32]);
        Assert.Equal(Pair(KvFormat.Int2, KvFormat.Int2), byFormat[KvFormat.Int2]);
        Assert.Equal(K(KvFormat.Int4).ByteSize, byFormat[KvFormat.Int4]);
        Assert.Equal(V(KvFormat.Int8).ByteSize + 2 * K(KvFormat.Int8).ByteSize, byFormat[KvFormat.Int8]);
        Assert.Equal(2 * V(KvFormat.Fp8E4M3).ByteSize, byFormat[KvFormat.Fp8E4M3]);
        Assert.Equal(K(KvFormat.Binary).ByteSize, byFormat[KvFormat.Binary]);
        Assert.Equal(V(KvFormat.Ternary).ByteSize, byFormat[KvFormat.Ternary]);
        Assert.Equal(Enumerable.Range(0, 150), cache.Positions(0, 0));
        Assert.Equal(Enumerable.Range(0, 150), cache.Positions(0, 1));
        var read = cache.Read(0, 1);
        Assert.Equal(reference.Head(0, 1).SelectMany(t => t.K), read.Keys);
        Assert.Equal(reference.Head(0, 1).SelectMany(t => t.V), read.Values);
        AssertAttention(cache, reference, rng, "mixed formats");

        // Appending continues in the cache's own format after the mixed blocks.
        var k = Representable(Gaussians(rng, 40 * Row), KvFormat.F16, HeadDim);
        var v = Representable(Gaussians(rng, 40 * Row), KvFormat.F16, HeadDim);
        cache.Append(0, k, v, 40); reference.Append(0, k, v, 40);
        Assert.Equal(head0 + f16 + Tail(24) - Tail(16), cache.BytesByLayerHead(0, 0)); // 16 + 40 = one block + 24
        AssertAttention(cache, reference, rng, "mixed formats, then appended");
    }

    /// <summary>
    /// F16 → Int2 of three full blocks: every element within half an Int2 step of its F16 value (step = group range / 3;
    /// key groups are a channel over the block's 32 tokens, value groups a token's 32 channels), plus the f16 rounding
    /// of the group's scale and min. Untouched tokens (the tail, the other head) are unchanged.
    /// </summary>
    [Fact]
    public void RequantizeF16ToInt2_ErrorWithinHalfAStep()
    {
        var rng = new Random(7);
        var (cache, reference) = Build(rng, 106);
        using var _ = cache;
        cache.Requantize(0, 0, Flags(106, p => p < 96), KvFormat.Int2, KvFormat.Int2);
        var (keys, values) = cache.Read(0, 0);
        var original = reference.Head(0, 0);
        double worst = 0;
        for (int block = 0; block < 3; block++)
            for (int c = 0; c < HeadDim; c++)
            {
                var group = Enumerable.Range(block * 32, 32).Select(t => (double)original[t].K[c]).ToArray();
                foreach (int t in Enumerable.Range(block * 32, 32))
                    worst = Math.Max(worst, CheckWithinStep(group, original[t].K[c], keys[t * HeadDim + c], $"key {t}, channel {c}"));
            }
        for (int t = 0; t < 96; t++)
        {
            var group = original[t].V.Select(x => (double)x).ToArray();
            for (int c = 0; c < HeadDim; c++)
                worst = Math.Max(worst, CheckWithinStep(group, original[t].V[c], values[t * HeadDim + c], $"value {t}, channel {c}"));
        }
        Assert.True(worst > 0.3, $"largest error is {worst} of a step: were the tokens quantized at all?");
        for (int t = 96; t < 106; t++)
        {
            Assert.Equal(original[t].K, keys.AsSpan(t * HeadDim, HeadDim).ToArray());
            Assert.Equal(original[t].V, values.AsSpan(t * HeadDim, HeadDim).ToArray());
        }
        var other = cache.Read(0, 1);
        Assert.Equal(reference.Head(0, 1).SelectMany(t => t.K), other.Keys);
        Assert.Equal(3 * Pair(KvFormat.Int2, KvFormat.Int2) + Tail(10), cache.BytesByLayerHead(0, 0));
    }

    /// <summary>|decoded − x| ≤ step/2 + the f16 rounding of min and scale; returns the error in steps.</summary>
    private static double CheckWithinStep(double[] group, float x, float decoded, string where)
    {
        double min = group.Min(), max = group.Max(), step = (max - min) / 3;
        double bound = step / 2 + (Math.Abs(min) + 3 * step) * Math.Pow(2, -10) + 1e-7;
        double err = Math.Abs(decoded - x);
        Assert.True(err <= bound, $"{where}: {x} decoded as {decoded}, error {err:E3} > {bound:E3} (step {step:E3})");
        return step > 0 ? err / step : 0;
    }

    /// <summary>
    /// Block 1 of head 0 → Int4, then evicting 2 tokens of block 0 (F16) and 2 of block 1: the affected run becomes a
    /// 30-token F16 block and a 30-token Int4 block (the kept Int4 values quantized once more), so each kept token
    /// keeps its format and the bytes are those of the same block pairs as before.
    /// </summary>
    [Fact]
    public void EvictAfterRequantize_KeepsEachTokensFormat()
    {
        var rng = new Random(55);
        var (cache, reference) = Build(rng, 150);
        using var _ = cache;
        cache.Requantize(0, 0, Flags(150, p => p is >= 32 and < 64), KvFormat.Int4, KvFormat.Int4);
        reference.RoundTripRun(0, 0, 32, 32, K(KvFormat.Int4), V(KvFormat.Int4));
        long before = cache.BytesByLayerHead(0, 0);
        var evict = new HashSet<int> { 10, 20, 40, 50 };
        cache.Evict(0, 0, evict); reference.Evict(0, 0, evict);
        reference.RoundTripRun(0, 0, 30, 30, K(KvFormat.Int4), V(KvFormat.Int4));
        Assert.Equal(before, cache.BytesByLayerHead(0, 0));
        Assert.Equal(Pair(KvFormat.Int4, KvFormat.Int4), cache.BytesByFormat(0, 0)[KvFormat.Int4]);
        Assert.Equal(3 * Pair(KvFormat.F16, KvFormat.F16), cache.BytesByFormat(0, 0)[KvFormat.F16]);
        var keys = cache.Read(0, 0).Keys;
        Assert.Equal(reference.Head(0, 0).Take(30).SelectMany(t => t.K), keys.Take(30 * HeadDim)); // F16: exact
        AssertAttention(cache, reference, rng, "evicted after re-quantization");

        // Truncating inside the Int4 block keeps its tokens Int4 (a partial block), not the F16 of a fresh append.
        cache.Truncate(55); reference.Truncate(55);
        reference.RoundTripRun(0, 0, 30, reference.Head(0, 0).Count - 30, K(KvFormat.Int4), V(KvFormat.Int4));
        Assert.Equal(Pair(KvFormat.Int4, KvFormat.Int4), cache.BytesByFormat(0, 0)[KvFormat.Int4]);
        AssertAttention(cache, reference, rng, "truncated inside the Int4 block");
    }

    /// <summary>
    /// Re-quantizing a whole F16 cache (4 heads × 4096 tokens × 128 dims: 512 block pairs of 16 KiB) to Int2 frees the
    /// F16 blocks: the pools' live bytes become 512 Int2 pairs (1536 + 1536 bytes) and the F16 pool's slabs are unmapped.
    /// </summary>
    [Fact]
    public void RequantizeAll_PoolLiveBytesDrop()
    {
        const int kvHeads = 4, headDim = 128, tokens = 4096;
        var rng = new Random(3);
        using var cache = new PagedKvCache(1, kvHeads, kvHeads, headDim, new PagedKvCacheOptions { MaxTokens = tokens });
        cache.Append(0, Gaussians(rng, tokens * kvHeads * headDim), Gaussians(rng, tokens * kvHeads * headDim), tokens);
        var f16 = BlockLayout.ForKeys(KvFormat.F16, headDim).ByteSize * 2L;
        Assert.Equal(512 * f16, cache.PoolLiveBytes);
        long reserved = cache.PoolReservedBytes;
        Assert.True(reserved >= 512 * f16);
        var all = Enumerable.Repeat(true, tokens).ToArray();
        for (int g = 0; g < kvHeads; g++) cache.Requantize(0, g, all, KvFormat.Int2, KvFormat.Int2);
        long int2 = BlockLayout.ForKeys(KvFormat.Int2, headDim).ByteSize + BlockLayout.ForValues(KvFormat.Int2, headDim).ByteSize;
        Assert.Equal(3072, int2);
        Assert.Equal(512 * int2, cache.PoolLiveBytes);
        Assert.Equal(512 * int2, cache.ByteCount);
        Assert.True(cache.PoolReservedBytes < reserved / 3, $"reserved {cache.PoolReservedBytes} bytes after re-quantization, {reserved} before");
        Assert.Equal(16.0 / 3, cache.CompressionRatio, 12);
    }

    [Fact]
    public void Requantize_BadMask_IsRefused()
    {
        var (cache, _) = Build(new Random(1), 40);
        using var _ = cache;
        Assert.Throws<ArgumentException>(() => cache.Requantize(0, 0, new bool[39], KvFormat.Int4, KvFormat.Int4));
    }
}
