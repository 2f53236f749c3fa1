using KvSharp.Cache.Blocks;
using KvSharp.Compression.Quantization;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Scorers;

namespace KvSharp.Tests.Compression.Quantization;

public class ZipVlAndVidKvTests
{
    private const int Tokens = 40;

    private static int[] ExactTokens(float[] k0, float[] v0, float[] k, float[] v, int d) =>
        Enumerable.Range(0, Tokens).Where(t => Enumerable.Range(0, d).All(c => k[t * d + c] == k0[t * d + c] && v[t * d + c] == v0[t * d + c])).ToArray();

    [Fact]
    public void ZipVlDecidesTheImportantRatioPerLayer()
    {
        using var data = new SyntheticCache(Tokens, KvFormat.F32);
        var cache = data.Cache;
        int d = cache.HeadDim;
        var before = Enumerable.Range(0, cache.Layers * cache.KvHeads).Select(i => cache.Read(i / cache.KvHeads, i % cache.KvHeads)).ToArray();
        var scores = new RandomScorer(4).Score(data.Context());
        PressRegistry.Parse("zipvl(random:seed=4):tau=0.6,high=f32,low=int2").Compress(data.Context());
        for (int l = 0; l < cache.Layers; l++)
        {
            // float64 reference: per head the fewest best tokens reaching mass 0.6; the layer's ratio is their mean share.
            double ratio = 0;
            for (int h = 0; h < cache.KvHeads; h++)
            {
                var s = scores[l, h].Select(x => (double)x).OrderByDescending(x => x).ToArray();
                double total = s.Sum(), cumulative = 0;
                int count = 0;
                foreach (double x in s) { if (cumulative / total < 0.6) count++; cumulative += x; }
                ratio += count / (double)Tokens / cache.KvHeads;
            }
            int keep = (int)Math.Ceiling(ratio * Tokens - 1e-9);
            for (int h = 0; h < cache.KvHeads; h++)
            {
                var (k0, v0) = before[l * cache.KvHeads + h];
                var (k, v) = cache.Read(l, h);
                var expected = Enumerable.Range(0, Tokens).OrderByDescending(t => scores[l, h][t]).Take(keep).Order();
                Assert.Equal(expected, ExactTokens(k0, v0, k, v, d));
            }
        }
    }

    [Fact]
    public void VidKvStoresWholeBlocksAsItsLayoutsAndLeavesTheResidual()
    {
        // 70 tokens in blocks of 32, residual 5: the oldest 64 tokens of each head become 2 VidKV block pairs (16 outlier
        // channels of 64 at outliers=0.25, 3 salient tokens per block), equal to the float64 reference of the formats;
        // tokens 64..69 stay float32.
        using var data = new SyntheticCache(70, KvFormat.F32, blockTokens: 32);
        var cache = data.Cache;
        int d = cache.HeadDim;
        var before = Enumerable.Range(0, cache.Layers * cache.KvHeads).Select(i => cache.Read(i / cache.KvHeads, i % cache.KvHeads)).ToArray();
        var press = PressRegistry.Parse("vidkv:outliers=0.25,salient=3,residual=5");
        press.Compress(data.Context());
        int m = (int)Math.Round(0.25 * d), own = 0;
        for (int l = 0; l < cache.Layers; l++)
        {
            if (cache.SharedLayerSource(l) >= 0) continue;
            own++;
            for (int h = 0; h < cache.KvHeads; h++)
            {
                var (k0, v0) = before[l * cache.KvHeads + h];
                var (k, v) = cache.Read(l, h);
                for (int b = 0; b < 2; b++)
                {
                    var kb = k0.AsSpan(b * 32 * d, 32 * d).ToArray();
                    var vb = v0.AsSpan(b * 32 * d, 32 * d).ToArray();
                    var kr = Tests.Cache.Blocks.VidKvReference.Keys(32, d, m, kb, 32).Decoded;
                    var vr = Tests.Cache.Blocks.VidKvReference.Values(32, d, 3, vb, 32).Decoded;
                    for (int e = 0; e < 32 * d; e++)
                    {
                        Assert.True(Math.Abs(k[b * 32 * d + e] - kr[e]) <= 1e-5 * (1 + Math.Abs(kr[e])), $"layer {l} head {h} key element {b * 32 * d + e}");
                        Assert.Equal(vr[e], v[b * 32 * d + e], 5);
                    }
                }
                Assert.Equal(k0.AsSpan(64 * d).ToArray(), k.AsSpan(64 * d).ToArray());
                Assert.Equal(v0.AsSpan(64 * d).ToArray(), v.AsSpan(64 * d).ToArray());
            }
        }
        var (kl, vl) = new VidKvPress(0.25, 3).Layouts(32, d);
        var bytes = cache.BytesByFormat();
        Assert.Equal(own * cache.KvHeads * 2L * kl.ByteSize, bytes[KvFormat.VidKvKey]);
        Assert.Equal(own * cache.KvHeads * 2L * vl.ByteSize, bytes[KvFormat.VidKvValue]);
        Assert.Equal(own * cache.KvHeads * 6L * 2 * d * sizeof(float), bytes[KvFormat.F32]);
    }

    [Fact]
    public void VidKvRefusesMoreSalientTokensThanABlockHolds()
    {
        using var data = new SyntheticCache(40, KvFormat.F32, blockTokens: 32);
        var e = Assert.Throws<KvSharpException>(() => PressRegistry.Parse("vidkv:salient=33").Compress(data.Context()));
        Assert.Contains("salient=33", e.Message);
    }

    [Fact]
    public void PerChannelQuantizationIsEquivariantToChannelScales()
    {
        // MiKV's balancer scales key channels by b > 0; with per-channel groups Q(b·k)/b = Q(k) up to f16 parameter rounding,
        // which is why MiKvPress does not apply it (docs/quantization.md). Powers of two keep the f16 rounding exact.
        var rng = new Random(1);
        int tokens = 32, d = 16;
        var k = Enumerable.Range(0, tokens * d).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
        var b = Enumerable.Range(0, d).Select(c => MathF.Pow(2, c % 5 - 2)).ToArray();
        var scaled = k.Select((x, e) => x * b[e % d]).ToArray();
        var layout = BlockLayout.ForKeys(KvFormat.Int2, d, tokens);
        var plain = RoundTrip(layout, k, tokens);
        var balanced = RoundTrip(layout, scaled, tokens);
        for (int e = 0; e < k.Length; e++) Assert.Equal(plain[e], balanced[e] / b[e % d], 6);
    }

    private static float[] RoundTrip(BlockLayout layout, float[] x, int tokens)
    {
        var bytes = new byte[layout.ByteSize];
        BlockCodec.Encode(layout, x, tokens, bytes);
        var r = new float[x.Length];
        BlockCodec.Decode(layout, bytes, tokens, r);
        return r;
    }
}
