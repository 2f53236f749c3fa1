using KvSharp.Cache.Blocks;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Scorers;

namespace KvSharp.Tests.Compression.Quantization;

/// <summary>MiKV and LeanKV on a cache of known values: which tokens keep which precision, against float64 references.</summary>
public class MixedPrecisionPressTests
{
    private const int Tokens = 48;

    [Fact]
    public void MiKvKeepsTheTopShareExactAndQuantizesTheRestPerToken()
    {
        using var data = new SyntheticCache(Tokens, KvFormat.F32);
        var cache = data.Cache;
        int d = cache.HeadDim;
        var before = Enumerable.Range(0, cache.Layers * cache.KvHeads).Select(i => cache.Read(i / cache.KvHeads, i % cache.KvHeads)).ToArray();
        var scores = new RandomScorer(5).Score(data.Context());
        PressRegistry.Parse("mikv(random:seed=5):high=f32,low=int2,top=0.25").Compress(data.Context());
        for (int i = 0; i < before.Length; i++)
        {
            var (k0, v0) = before[i];
            var (k, v) = cache.Read(i / cache.KvHeads, i % cache.KvHeads);
            Assert.Equal(Tokens, cache.Positions(i / cache.KvHeads, i % cache.KvHeads).Count); // nothing evicted
            var s = scores[i];
            var vRef = QuantReference.PerToken(v0, Tokens, d, d, 2);
            var exact = Enumerable.Range(0, Tokens).Where(t => Enumerable.Range(0, d).All(c => k[t * d + c] == k0[t * d + c] && v[t * d + c] == v0[t * d + c])).ToList();
            Assert.Equal(12, exact.Count); // 25 % of 48
            var expected = Enumerable.Range(0, Tokens).OrderByDescending(t => s[t]).Take(12).Order();
            Assert.Equal(expected, exact);
            foreach (int t in Enumerable.Range(0, Tokens).Except(exact))
                for (int c = 0; c < d; c++) QuantReference.Near(vRef[t * d + c], v[t * d + c], $"head {i} token {t} value {c}");
        }
        Assert.True(cache.BytesByFormat().ContainsKey(KvFormat.Int2));
    }

    /// <summary>
    /// MiKV with keys=token (the paper's quantizer): every head gets a power-of-two balance b, and each low-tier key equals the float64
    /// per-token Int2 quantization (one group over all channels) of b⊙k, divided back by b; the high tier (F32) is exact.
    /// With keys=channel (the default) no balance is set.
    /// </summary>
    [Fact]
    public void MiKvQuantizesLowKeysPerTokenAfterTheBalancer()
    {
        using var data = new SyntheticCache(Tokens, KvFormat.F32);
        var cache = data.Cache;
        int d = cache.HeadDim;
        var before = Enumerable.Range(0, cache.Layers * cache.KvHeads).Select(i => cache.Read(i / cache.KvHeads, i % cache.KvHeads)).ToArray();
        var scores = new RandomScorer(5).Score(data.Context());
        PressRegistry.Parse("mikv(random:seed=5):high=f32,low=int2,top=0.25,keys=token,qwindow=16").Compress(data.Context());
        for (int i = 0; i < before.Length; i++)
        {
            int layer = i / cache.KvHeads, head = i % cache.KvHeads;
            var b = cache.KeyBalance(layer, head) ?? throw new Xunit.Sdk.XunitException($"head {i} has no key balance");
            Assert.All(b, x => Assert.Equal(x, MathF.ScaleB(1f, MathF.ILogB(x))));
            Assert.Contains(b, x => x != 1f); // random keys and queries are not balanced already
            var k0 = before[i].Keys;
            var k = cache.ReadKeys(layer, head);
            var high = Enumerable.Range(0, Tokens).OrderByDescending(t => scores[i][t]).Take(12).ToHashSet();
            var scaled = k0.Select((x, e) => x * b[e % d]).ToArray();
            var reference = QuantReference.PerToken(scaled, Tokens, d, d, 2);
            for (int t = 0; t < Tokens; t++)
                for (int c = 0; c < d; c++)
                {
                    if (high.Contains(t)) Assert.Equal(k0[t * d + c], k[t * d + c]);
                    else QuantReference.Near(reference[t * d + c] / b[c], k[t * d + c], $"head {i} token {t} key {c}");
                }
        }

        using var channel = new SyntheticCache(Tokens, KvFormat.F32);
        PressRegistry.Parse("mikv(random:seed=5):high=f32,low=int2,top=0.25").Compress(channel.Context());
        Assert.Null(channel.Cache.KeyBalance(0, 0));
    }

    [Fact]
    public void LeanKvTiersByCumulativeMassPerHeadAndPrunesTheRest()
    {
        using var data = new SyntheticCache(Tokens, KvFormat.F32);
        var cache = data.Cache;
        int d = cache.HeadDim;
        var before = Enumerable.Range(0, cache.Layers * cache.KvHeads).Select(i => cache.Read(i / cache.KvHeads, i % cache.KvHeads)).ToArray();
        var scores = new RandomScorer(9).Score(data.Context());
        PressRegistry.Parse("leankv(random:seed=9):high=0.5,low=0.8,important=f32,less=int2").Compress(data.Context());
        for (int i = 0; i < before.Length; i++)
        {
            // float64 reference of the rule: by score, highest first; tier by the mass before the token.
            var s = scores[i].Select(x => (double)x).ToArray();
            double total = s.Sum(), cumulative = 0;
            var tier = new int[Tokens];
            foreach (int t in Enumerable.Range(0, Tokens).OrderByDescending(t => s[t]))
            {
                tier[t] = cumulative / total < 0.5 ? 0 : cumulative / total < 0.8 ? 1 : 2;
                cumulative += s[t];
            }
            var kept = Enumerable.Range(0, Tokens).Where(t => tier[t] < 2).ToList();
            int layer = i / cache.KvHeads, head = i % cache.KvHeads;
            Assert.Equal(kept, cache.Positions(layer, head));
            var (_, v0) = before[i];
            var (_, v) = cache.Read(layer, head);
            var vRef = QuantReference.PerToken(v0, Tokens, d, d, 2);
            for (int j = 0; j < kept.Count; j++)
                for (int c = 0; c < d; c++)
                {
                    int t = kept[j];
                    QuantReference.Near(tier[t] == 0 ? v0[t * d + c] : vRef[t * d + c], v[j * d + c], $"head {i} token {t} value {c}");
                }
        }
    }

    /// <summary>prune=false: every token stays; the tokens LeanKV would prune are stored like the less important ones.</summary>
    [Fact]
    public void LeanKvWithoutPruningKeepsEveryTokenAtTheLessImportantFormat()
    {
        using var data = new SyntheticCache(Tokens, KvFormat.F32);
        var cache = data.Cache;
        int d = cache.HeadDim;
        var before = Enumerable.Range(0, cache.Layers * cache.KvHeads).Select(i => cache.Read(i / cache.KvHeads, i % cache.KvHeads)).ToArray();
        var scores = new RandomScorer(9).Score(data.Context());
        PressRegistry.Parse("leankv(random:seed=9):high=0.5,low=0.8,important=f32,less=int2,prune=false").Compress(data.Context());
        for (int i = 0; i < before.Length; i++)
        {
            var s = scores[i].Select(x => (double)x).ToArray();
            double total = s.Sum(), cumulative = 0;
            var exact = new bool[Tokens];
            foreach (int t in Enumerable.Range(0, Tokens).OrderByDescending(t => s[t]))
            {
                exact[t] = cumulative / total < 0.5;
                cumulative += s[t];
            }
            int layer = i / cache.KvHeads, head = i % cache.KvHeads;
            Assert.Equal(Enumerable.Range(0, Tokens), cache.Positions(layer, head));
            var (k0, v0) = before[i];
            var (k, v) = cache.Read(layer, head);
            var vRef = QuantReference.PerToken(v0, Tokens, d, d, 2);
            Assert.Contains(exact, e => !e); // some tokens past mass 0.8 would have been pruned: here they are Int2
            for (int t = 0; t < Tokens; t++)
                for (int c = 0; c < d; c++)
                {
                    if (exact[t]) Assert.Equal(k0[t * d + c], k[t * d + c]);
                    QuantReference.Near(exact[t] ? v0[t * d + c] : vRef[t * d + c], v[t * d + c], $"head {i} token {t} value {c}");
                }
        }
    }
}
