using KvSharp.Compression.Budgets;

namespace KvSharp.Tests.Compression;

/// <summary>Budget arithmetic against hand-computed values.</summary>
public class BudgetTests
{
    private const float Inf = float.PositiveInfinity;

    [Fact]
    public void KeepMask_KeepsWhatTheFullRankingKeeps()
    {
        // The selection against the sort it replaced (TopK.Descending's ranking, ties to the later index): scores drawn
        // from a few values (many ties), with ±0, ±∞, every keep from none to more than the head holds.
        var random = new Random(7);
        float[] values = [0f, -0f, 0.25f, 0.5f, -1f, 3f, Inf, float.NegativeInfinity, 1e-30f, -1e-30f];
        for (int trial = 0; trial < 200; trial++)
        {
            var scores = new float[random.Next(0, 200)];
            for (int i = 0; i < scores.Length; i++) scores[i] = trial % 3 == 0 ? (float)random.NextDouble() : values[random.Next(values.Length)];
            for (int keep = 0; keep <= scores.Length + 1; keep++) // cuts of up to 64 in one pass, larger by a selection
            {
                var order = TopK.Descending(scores);
                var expected = new bool[scores.Length];
                for (int r = 0; r < order.Length; r++) expected[order[r]] = r < keep || float.IsPositiveInfinity(scores[order[r]]);
                Assert.Equal(expected, TopK.KeepMask(scores, keep));
            }
        }
    }

    [Fact]
    public void Uniform_RatioTokensAndTotal()
    {
        var s = Scores.Of(2, 2, Scores.Ramp(10), Scores.Ramp(7), Scores.Ramp(3), Scores.Ramp(0));
        // keep=0.3: round(3), round(2.1), round(0.9), 0
        Assert.Equal([3, 2, 1, 0], new UniformBudget(KeepTarget.Ratio(0.3)).Allocate(s));
        // tokens=4 per head, capped by what each head holds
        Assert.Equal([4, 4, 3, 0], new UniformBudget(KeepTarget.PerHead(4)).Allocate(s));
        // total=10 over 4 heads: floor(2.5) each, capped
        Assert.Equal([2, 2, 2, 0], new UniformBudget(KeepTarget.Total(10)).Allocate(s));
    }

    [Fact]
    public void Global_TakesTheTopScoresOfAllHeads()
    {
        var s = Scores.Of(1, 2, [5, 1, 1, 1], [4, 3, 2, 0]);
        Assert.Equal([1, 2], new GlobalBudget(KeepTarget.Total(3)).Allocate(s));   // 5 | 4, 3
        Assert.Equal([1, 3], new GlobalBudget(KeepTarget.Ratio(0.5)).Allocate(s)); // 5 | 4, 3, 2
        Assert.Equal([1, 3], new GlobalBudget(KeepTarget.PerHead(2)).Allocate(s)); // 2 per head = 4 in all: 5 | 4, 3, 2
    }

    [Fact]
    public void Pyramid_FollowsTheFormula()
    {
        // C = 10, w = 2 forced, L = 3, beta = 20: min = 8/20 = 0.4, max = 16 - 0.4 = 15.6;
        // layer budgets 15.6 + 2 = 17.6 -> 18, 15.6 - 7.6 + 2 = 10, 0.4 + 2 = 2.4 -> 2.
        float[] Head() => [Inf, Inf, .. Scores.Ramp(98)];
        var s = Scores.Of(3, 1, Head(), Head(), Head());
        var budget = new PyramidBudget(KeepTarget.PerHead(10), beta: 20);
        Assert.Equal([18, 10, 2], budget.Allocate(s));
        Assert.Equal(17.6, budget.LayerBudget(10, 2, 100, 0, 3), 12);
        Assert.Equal(2.4, budget.LayerBudget(10, 2, 100, 2, 3), 12);
        // Fewer candidates than 2 (C - w) = 16: the uniform C.
        Assert.Equal(10, budget.LayerBudget(10, 2, 15, 0, 3));
        float[] Short() => [Inf, Inf, .. Scores.Ramp(13)];
        Assert.Equal([10, 10, 10], budget.Allocate(Scores.Of(3, 1, Short(), Short(), Short())));
    }

    [Fact]
    public void AdaKv_PoolsALayerAndGrantsTheFloor()
    {
        var high = Scores.Ramp(10, start: 10);
        var low = Scores.Ramp(10);
        var s = Scores.Of(2, 2, high, low, low, high);
        // keep 0.4 -> share 4 per head, 8 per layer. Floor 0: the high head takes all 8.
        Assert.Equal([8, 0, 0, 8], new AdaKvBudget(KeepTarget.Ratio(0.4), floor: 0).Allocate(s));
        // Floor 0.5 -> 2 each first, then the 4 left go to the high head.
        Assert.Equal([6, 2, 2, 6], new AdaKvBudget(KeepTarget.Ratio(0.4), floor: 0.5).Allocate(s));
        // Floor 0.2 of 4 = 0.8 -> 0.
        Assert.Equal([8, 0, 0, 8], new AdaKvBudget(KeepTarget.Ratio(0.4), floor: 0.2).Allocate(s));
    }

    [Fact]
    public void Head_KeepsWholeHeadsByMaximumScore()
    {
        var s = Scores.Of(2, 2, [3, 0], [9, 1], [1, 1], [5, Inf]);
        // max finite scores 3, 9, 1, 5; keep half of the heads: 1 and 3 keep everything.
        Assert.Equal([0, 2, 0, 2], new HeadBudget(KeepTarget.Ratio(0.5)).Allocate(s));
        // A profile overrides the scores and pays head 3's forced token first (B = 4): head 0 whole (1 + 2 = 3 ≤ 4),
        // head 2 would make 5 > 4.
        Assert.Equal([2, 0, 0, 1], new HeadBudget(KeepTarget.Ratio(0.5), [4, 1, 3, 2]).Allocate(s));
    }
}
