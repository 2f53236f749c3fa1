using KvSharp.Cache.Blocks;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Scorers;

namespace KvSharp.Tests.Compression;

/// <summary>Scorers that need no attention, against float64 computations on known keys.</summary>
public class ScorerTests
{
    [Theory]
    [InlineData(KvFormat.F32)]
    [InlineData(KvFormat.F16)]
    public void KeyNorm_IsMinusTheStoredKeysNorm(KvFormat format)
    {
        using var data = new SyntheticCache(tokens: 12, format); // 3 full blocks of 4: every key is encoded
        var c = data.Config;
        var scores = new KeyNormScorer().Score(data.Context());
        for (int l = 0; l < c.NumLayers; l++)
            for (int h = 0; h < c.NumKvHeads; h++)
                for (int t = 0; t < 12; t++)
                {
                    double sum = 0;
                    for (int i = 0; i < c.HeadDim; i++)
                    {
                        float k = data.Keys[l][t * c.NumKvHeads * c.HeadDim + h * c.HeadDim + i];
                        double stored = format == KvFormat.F16 ? (double)(Half)k : k;
                        sum += stored * stored;
                    }
                    Assert.Equal(-Math.Sqrt(sum), scores[l, h][t], 1e-4);
                }
    }

    [Fact]
    public void KeyNormPress_KeepsTheLowestNormKeys()
    {
        using var data = new SyntheticCache(tokens: 20);
        var c = data.Config;
        PressRegistry.Parse("keynorm:tokens=5").Compress(data.Context());
        for (int l = 0; l < c.NumLayers; l++)
            for (int h = 0; h < c.NumKvHeads; h++)
            {
                var norms = Enumerable.Range(0, 20).Select(t => Enumerable.Range(0, c.HeadDim)
                    .Sum(i => Math.Pow(data.Keys[l][t * c.NumKvHeads * c.HeadDim + h * c.HeadDim + i], 2))).ToArray();
                var expected = Enumerable.Range(0, 20).OrderBy(t => norms[t]).Take(5).Order().ToArray();
                Assert.Equal(expected, data.Cache.Positions(l, h));
            }
    }

    [Fact]
    public void StreamingLlm_KeepsSinksAndRecentTokens_AndTheProtectedPrefixOutsideTheBudget()
    {
        using var data = new SyntheticCache(tokens: 20);
        // Positions 0, 1 protected (outside the budget); sinks 2, 3 forced; keep half of the 18 candidates = 9:
        // the 2 sinks and the 7 most recent.
        PressRegistry.Parse("streamingllm:sinks=4,keep=0.5").Compress(data.Context(protectedPrefix: 2));
        int[] expected = [0, 1, 2, 3, 13, 14, 15, 16, 17, 18, 19];
        for (int l = 0; l < data.Config.NumLayers; l++)
            for (int h = 0; h < data.Config.NumKvHeads; h++)
                Assert.Equal(expected, data.Cache.Positions(l, h));
        Assert.Equal(20, data.Cache.Length); // eviction keeps positions: the next token is still at 20
    }

    [Fact]
    public void ForcedTokensStayEvenOverBudget()
    {
        using var data = new SyntheticCache(tokens: 12);
        new ScoredPress(new StreamingLlmScorer(sinks: 6), new UniformBudget(KeepTarget.PerHead(2))).Compress(data.Context());
        Assert.Equal([0, 1, 2, 3, 4, 5], data.Cache.Positions(0, 0));
    }

    [Fact]
    public void Random_IsDeterministicInTheSeed()
    {
        using var data = new SyntheticCache(tokens: 16);
        var a = new RandomScorer(5).Score(data.Context());
        var b = new RandomScorer(5).Score(data.Context());
        var other = new RandomScorer(6).Score(data.Context());
        Assert.Equal(a[1, 1], b[1, 1]);
        Assert.NotEqual(a[1, 1], other[1, 1]);
        Assert.NotEqual(a[0, 0], a[0, 1]);
    }

    [Fact]
    public void Eviction_FreesPoolMemory()
    {
        using var data = new SyntheticCache(tokens: 64, KvFormat.F16, blockTokens: 8);
        long before = data.Cache.PoolLiveBytes, bytes = data.Cache.ByteCount;
        PressRegistry.Parse("keynorm:keep=0.25").Compress(data.Context());
        // 64 -> 16 tokens per head: 8 blocks -> 2 blocks.
        Assert.Equal(before / 4, data.Cache.PoolLiveBytes);
        Assert.Equal(bytes / 4, data.Cache.ByteCount);
    }

    [Fact]
    public void Composition_AppliesPressesInTurn()
    {
        using var composed = new SyntheticCache(tokens: 40);
        using var manual = new SyntheticCache(tokens: 40);
        PressRegistry.Parse("streamingllm:keep=0.5 + keynorm:keep=0.5").Compress(composed.Context());
        new ScoredPress(new StreamingLlmScorer(), new UniformBudget(KeepTarget.Ratio(0.5))).Compress(manual.Context());
        new ScoredPress(new KeyNormScorer(), new UniformBudget(KeepTarget.Ratio(0.5))).Compress(manual.Context());
        for (int l = 0; l < 2; l++)
            for (int h = 0; h < 2; h++)
            {
                Assert.Equal(10, composed.Cache.Positions(l, h).Count);
                Assert.Equal(manual.Cache.Positions(l, h), composed.Cache.Positions(l, h));
                Assert.All(composed.Cache.Positions(l, h), p => Assert.True(p < 4 || p >= 24)); // survivors of the first press
            }
    }
}
