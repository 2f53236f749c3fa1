using KvSharp.Cache.Blocks;
using KvSharp.Compression.Quantization;

namespace KvSharp.Tests.Compression.Quantization;

public class KiviPressTests
{
    [Theory]
    [InlineData(2, 32)]
    [InlineData(4, 0)]
    [InlineData(2, 70)]
    public void QuantizesTheOldWholeGroupsAgainstFloat64Reference(int bits, int residual)
    {
        const int tokens = 100, group = 32;
        using var data = new SyntheticCache(tokens, KvFormat.F32, blockTokens: group);
        var cache = data.Cache;
        int d = cache.HeadDim;
        var before = Enumerable.Range(0, cache.Layers * cache.KvHeads).Select(i => cache.Read(i / cache.KvHeads, i % cache.KvHeads)).ToArray();
        new KiviPress(bits, group, residual).Compress(data.Context());
        int quantized = (tokens - residual) / group * group;
        for (int i = 0; i < before.Length; i++)
        {
            var (k0, v0) = before[i];
            var (k, v) = cache.Read(i / cache.KvHeads, i % cache.KvHeads);
            var kRef = QuantReference.PerChannel(k0, quantized, d, group, bits);
            var vRef = QuantReference.PerToken(v0, quantized, d, Math.Min(32, d), bits);
            for (int e = 0; e < tokens * d; e++)
            {
                QuantReference.Near(e < quantized * d ? kRef[e] : k0[e], k[e], $"key {e}");
                QuantReference.Near(e < quantized * d ? vRef[e] : v0[e], v[e], $"value {e}");
            }
        }
        var formats = cache.BytesByFormat();
        Assert.Equal(quantized > 0, formats.ContainsKey(bits == 2 ? KvFormat.Int2 : KvFormat.Int4));
    }

    [Fact]
    public void RefusesAGroupTheCacheCannotHold()
    {
        using var data = new SyntheticCache(40, KvFormat.F16, blockTokens: 32);
        var e = Assert.Throws<KvSharpException>(() => new KiviPress(2, 16, 0).Compress(data.Context()));
        Assert.Contains("group=16", e.Message);
        Assert.Contains("32 tokens", e.Message);
    }

    [Fact]
    public void MatchingCacheSpecIsTheKiviCache()
    {
        Assert.Equal("Int2+r128", new KiviPress(2, 32, 128).MatchingCacheSpec.ToString());
        Assert.Throws<KvSharpException>(() => new KiviPress(3));
    }
}
