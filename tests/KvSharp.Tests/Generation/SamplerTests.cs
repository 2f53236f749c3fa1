using KvSharp.Generation.Sampling;
using KvSharp.GpuTests.Checks;

namespace KvSharp.Tests.Generation;

public class SamplerTests
{
    private static float[] Ln(params double[] probabilities) => probabilities.Select(p => (float)Math.Log(p)).ToArray();

    private static SamplerOptions Plain(float temperature = 1f) =>
        new() { Temperature = temperature, TopK = 0, TopP = 1f, MinP = 0f, RepetitionPenalty = 1f };

    [Fact]
    public void Xoshiro_MatchesReferenceVectors()
    {
        // Outputs of the reference C implementation from state {1,2,3,4}.
        var raw = new Xoshiro256StarStar(1, 2, 3, 4);
        Assert.Equal([11520UL, 0UL, 1509978240UL, 1215971899390074240UL],
            new[] { raw.NextUInt64(), raw.NextUInt64(), raw.NextUInt64(), raw.NextUInt64() });
        // Seed 0 through SplitMix64 (state e220a8397b1dcdaf, 6e789e6aa1b965f4, ...), computed by an independent Python port.
        var seeded = new Xoshiro256StarStar(0);
        Assert.Equal([0x99ec5f36cb75f2b4UL, 0xbf6e1f784956452aUL, 0x1a5f849d4933e6e0UL],
            new[] { seeded.NextUInt64(), seeded.NextUInt64(), seeded.NextUInt64() });
    }

    [Fact]
    public void Greedy_PicksFirstMaximum()
    {
        var sampler = new Sampler(SamplerOptions.Greedy);
        Assert.Equal(1, sampler.Sample([1f, 3f, 3f, 2f], []));
        Assert.Equal(0, sampler.Sample([7f, 7f, 7f], []));
        Assert.Equal(3, sampler.Sample([float.NegativeInfinity, -5f, -9f, -1f], []));
    }

    [Fact]
    public void TopK1_EqualsGreedy()
    {
        var rng = new Random(1234);
        var sampler = new Sampler(Plain(1.5f) with { TopK = 1 });
        for (int trial = 0; trial < 20; trial++)
        {
            // Few distinct values so that ties at the maximum are common.
            var logits = Enumerable.Range(0, 500).Select(_ => (float)rng.Next(0, 30)).ToArray();
            int expected = Array.IndexOf(logits, logits.Max());
            Assert.Equal(expected, sampler.Sample(logits, []));
        }
    }

    [Fact]
    public void TopK_KeepsBestWithLowerIdFirstOnTies()
    {
        var sampler = new Sampler(Plain() with { TopK = 3 });
        Assert.Equal([1, 2, 4], sampler.Candidates([1f, 4f, 4f, 2f, 4f, 0f], []));
        var two = new Sampler(Plain() with { TopK = 2 });
        Assert.Equal([3, 1], two.Candidates([1f, 4f, 4f, 9f, 4f, 0f], []));
    }

    [Fact]
    public void TopK_OnLargeVocabularyMatchesFullSort()
    {
        var rng = new Random(7);
        var logits = Enumerable.Range(0, 150_000).Select(_ => (float)Math.Round(rng.NextDouble() * 40, 1)).ToArray();
        var expected = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(40).ToArray();
        var sampler = new Sampler(Plain() with { TopK = 40 });
        Assert.Equal(expected, sampler.Candidates(logits, []));
    }

    [Theory]
    [InlineData(0.4f, new[] { 1 })]           // 0.5 alone reaches 0.4
    [InlineData(0.7f, new[] { 1, 3 })]        // 0.5 + 0.25 = 0.75
    [InlineData(0.85f, new[] { 1, 3, 2 })]    // 0.75 + 0.15 = 0.90
    [InlineData(0.95f, new[] { 1, 3, 2, 0 })] // needs all
    public void TopP_KeepsSmallestSetReachingP(float p, int[] expected)
    {
        var sampler = new Sampler(Plain() with { TopP = p });
        Assert.Equal(expected, sampler.Candidates(Ln(0.1, 0.5, 0.15, 0.25), []));
    }

    [Fact]
    public void TopP_WithoutTopK_OnLargeVocabularyMatchesFullSortReference()
    {
        // Flat enough that 0.9 of the mass needs far more than the first 64-token window.
        var rng = new Random(99);
        var logits = Enumerable.Range(0, 20_000).Select(_ => (float)(rng.NextDouble() * 6)).ToArray();
        double max = logits.Max();
        double sum = logits.Sum(l => Math.Exp(l - max));
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
        double cumulative = 0;
        int keep = 0;
        while (cumulative < 0.9) cumulative += Math.Exp(logits[order[keep++]] - max) / sum;
        Assert.True(keep > 512, $"test needs a wide nucleus, got {keep}");

        // The kept set is what matters; its order is an implementation detail (bucket order).
        var sampler = new Sampler(Plain() with { TopP = 0.9f });
        Assert.Equal(order.Take(keep).Order().ToArray(), sampler.Candidates(logits, []).Order().ToArray());
    }

    [Theory]
    [InlineData(0.4f, new[] { 1 })]
    [InlineData(0.7f, new[] { 1, 3 })]
    [InlineData(0.85f, new[] { 1, 3, 2 })]
    public void TopP_AfterTopK_UsesRenormalizedMassOfTheKeptTokens(float p, int[] expected)
    {
        // Top-k=3 keeps 0.5, 0.25, 0.15 (total 0.9); renormalized: 0.556, 0.278, 0.167.
        var sampler = new Sampler(Plain() with { TopK = 3, TopP = p });
        Assert.Equal(expected, sampler.Candidates(Ln(0.1, 0.5, 0.15, 0.25), []));
        // Renormalized 0.556 + 0.278 = 0.833 >= 0.8 keeps two; the unnormalized 0.75 would have needed three.
        var twoOfThree = new Sampler(Plain() with { TopK = 3, TopP = 0.8f });
        Assert.Equal([1, 3], twoOfThree.Candidates(Ln(0.1, 0.5, 0.15, 0.25), []));
    }

    [Fact]
    public void TopP_WithEqualLogits_KeepsLowestIds()
    {
        var sampler = new Sampler(Plain() with { TopP = 0.45f }); // 10 tokens of 0.1 each: 5 reach 0.5 >= 0.45
        Assert.Equal([0, 1, 2, 3, 4], sampler.Candidates(new float[10], []));
    }

    [Fact]
    public void MinP_DropsTokensBelowFractionOfBest()
    {
        var sampler = new Sampler(Plain() with { MinP = 0.25f });
        // Threshold 0.25 * 0.5 = 0.125 keeps 0.5, 0.25, 0.15 and drops 0.1.
        Assert.Equal([1, 2, 3], sampler.Candidates(Ln(0.1, 0.5, 0.25, 0.15), []));
    }

    [Fact]
    public void Temperature_FrequenciesMatchSoftmax()
    {
        float[] logits = [1.0f, 2.0f, 0.5f, -1.0f, 1.5f];
        const double temperature = 0.7;
        const int draws = 20_000;
        var expected = Softmax(logits.Select(l => l / temperature).ToArray());

        var sampler = new Sampler(Plain((float)temperature) with { Seed = 42 });
        var counts = new int[logits.Length];
        for (int i = 0; i < draws; i++) counts[sampler.Sample(logits, [])]++;
        AssertFrequencies(expected, counts, draws);
    }

    [Fact]
    public void TopKThenTemperature_DrawsOnlyKeptTokensInRenormalizedProportions()
    {
        float[] logits = [0.2f, 1.0f, 0.9f, -0.5f, 0.95f];
        const int draws = 20_000;
        var sampler = new Sampler(Plain(2f) with { TopK = 2, Seed = 5 });
        var counts = new int[logits.Length];
        for (int i = 0; i < draws; i++) counts[sampler.Sample(logits, [])]++;
        // Kept: ids 1 and 4; softmax at T=2 over those two only.
        var kept = Softmax([1.0 / 2, 0.95 / 2]);
        AssertFrequencies([0, kept[0], 0, 0, kept[1]], counts, draws);
    }

    [Fact]
    public void RepetitionPenalty_DividesPositiveMultipliesNegativeOncePerToken()
    {
        float[] logits = [2f, -1f, 0.5f, 3f, 0f];
        var all = new Sampler(SamplerOptions.Greedy with { RepetitionPenalty = 2f, RepeatLastN = 64 });
        Assert.Equal([1f, -2f, 0.5f, 3f, 0f], all.PenalizedLogits(logits, [0, 1, 1, 1, 4]));

        var lastTwo = new Sampler(SamplerOptions.Greedy with { RepetitionPenalty = 2f, RepeatLastN = 2 });
        Assert.Equal([2f, -1f, 0.25f, 1.5f, 0f], lastTwo.PenalizedLogits(logits, [0, 1, 2, 3]));

        var off = new Sampler(SamplerOptions.Greedy with { RepetitionPenalty = 2f, RepeatLastN = 0 });
        Assert.Equal(logits, off.PenalizedLogits(logits, [0, 1, 3]));

        var whole = new Sampler(SamplerOptions.Greedy with { RepetitionPenalty = 4f, RepeatLastN = -1 });
        Assert.Equal([0.5f, -1f, 0.5f, 0.75f, 0f], whole.PenalizedLogits(logits, [0, 3, 3, 3, 3, 3, 3, 3, 3, 3]));
    }

    [Fact]
    public void RepetitionPenalty_ChangesGreedyChoice()
    {
        var sampler = new Sampler(SamplerOptions.Greedy with { RepetitionPenalty = 1.5f });
        Assert.Equal(0, sampler.Sample([3f, 2.5f], []));
        Assert.Equal(1, sampler.Sample([3f, 2.5f], [0])); // 3 / 1.5 = 2 < 2.5
    }

    [Fact]
    public void RepetitionPenalty_RejectsTokenOutsideVocabulary()
    {
        var sampler = new Sampler(SamplerOptions.Greedy with { RepetitionPenalty = 1.1f });
        Assert.Throws<ArgumentOutOfRangeException>(() => sampler.Sample([1f, 2f], [5]));
    }

    /// <summary>
    /// Every stage and the draw (over the survivors in id order, with the seed's uniform numbers) against the rules
    /// written out with a full sort and plain float64 sums, on fresh random rows: defaults on a 128K vocabulary, top-p
    /// over the whole vocabulary (the bucketed path), min-p, temperature alone, penalties, equal logits at every cut.
    /// </summary>
    [Fact]
    public void EveryStage_MatchesFloat64Reference() => SamplingChecks.CpuMatchesReference();

    [Fact]
    public void SameSeed_SameSequence_DifferentSeedsDiffer()
    {
        var rng = new Random(3);
        var logits = Enumerable.Range(0, 1000).Select(_ => (float)(rng.NextDouble() * 4)).ToArray();
        var options = new SamplerOptions { Temperature = 1f, TopK = 100, TopP = 0.95f, Seed = 11 };
        int[] Run(SamplerOptions o) { var s = new Sampler(o); return Enumerable.Range(0, 200).Select(_ => s.Sample(logits, [])).ToArray(); }

        var a = Run(options);
        Assert.Equal(a, Run(options));
        Assert.NotEqual(a, Run(options with { Seed = 12 }));

        var reseeded = new Sampler(options with { Seed = 999 });
        reseeded.Reseed(11);
        Assert.Equal(a, Enumerable.Range(0, 200).Select(_ => reseeded.Sample(logits, [])).ToArray());
    }

    [Theory]
    [InlineData("--temperature")]
    [InlineData("--top-k")]
    [InlineData("--top-p")]
    [InlineData("--min-p")]
    [InlineData("--repeat-penalty")]
    [InlineData("--repeat-last-n")]
    public void InvalidOptions_NameTheOption(string option)
    {
        var bad = option switch
        {
            "--temperature" => new SamplerOptions { Temperature = -0.1f },
            "--top-k" => new SamplerOptions { TopK = -1 },
            "--top-p" => new SamplerOptions { TopP = 0f },
            "--min-p" => new SamplerOptions { MinP = 1.5f },
            "--repeat-penalty" => new SamplerOptions { RepetitionPenalty = 0f },
            _ => new SamplerOptions { RepeatLastN = -2 },
        };
        var ex = Assert.Throws<KvSharpException>(() => new Sampler(bad));
        Assert.StartsWith(option + " ", ex.Message);
    }

    private static double[] Softmax(double[] x)
    {
        double max = x.Max();
        var e = x.Select(v => Math.Exp(v - max)).ToArray();
        double sum = e.Sum();
        return e.Select(v => v / sum).ToArray();
    }

    /// <summary>Each bin within 5 binomial standard deviations, and Pearson's chi-square below its 1e-6 tail.</summary>
    private static void AssertFrequencies(double[] expected, int[] counts, int draws)
    {
        double chi2 = 0;
        int bins = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double mean = expected[i] * draws;
            if (expected[i] == 0) { Assert.Equal(0, counts[i]); continue; }
            double sigma = Math.Sqrt(draws * expected[i] * (1 - expected[i]));
            Assert.True(Math.Abs(counts[i] - mean) <= 5 * sigma, $"token {i}: {counts[i]} draws, expected {mean:F0} ± {sigma:F0}");
            chi2 += (counts[i] - mean) * (counts[i] - mean) / mean;
            bins++;
        }
        // Chi-square 1e-6 upper quantiles for 1..4 degrees of freedom.
        double[] limit = [0, 23.9, 27.6, 30.7, 33.4];
        Assert.True(chi2 < limit[bins - 1], $"chi-square {chi2:F2} with {bins - 1} degrees of freedom");
    }
}
