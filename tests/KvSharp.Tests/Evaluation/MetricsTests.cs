using KvSharp.Evaluation.Metrics;

namespace KvSharp.Tests.Evaluation;

/// <summary>Scores and language-model metrics against hand-computed values.</summary>
public sealed class MetricsTests
{
    [Fact]
    public void StringMatchAll_IsTheFractionOfOutputsContainedIgnoringCase()
    {
        Assert.Equal(2 / 3.0, StringMatch.All(" 123, ABC-def.", ["123", "abc-DEF", "999"]), 12);
        Assert.Equal(0, StringMatch.All("", ["x"]));
        Assert.Equal(1, StringMatch.All("x y", ["x", "y"]));
    }

    [Fact]
    public void StringMatchPart_IsOneWhenAnyOutputIsContained()
    {
        Assert.Equal(1, StringMatch.Part("the answer is Paris", ["London", "paris"]));
        Assert.Equal(0, StringMatch.Part("the answer is Rome", ["London", "paris"]));
    }

    [Theory]
    [InlineData(" B", "B", 1)]
    [InlineData("(B) because", "(B) Their subconscious knew", 1)]
    [InlineData("BD", "BD", 1)]
    [InlineData("B, D.", "BD", 1)]
    [InlineData("B", "BD", 0)]
    [InlineData("A cat", "B", 0)]
    [InlineData("I think option c", "C", 1)]
    [InlineData("no idea", "A", 0)]
    public void Choice_ComparesTheSetOfLetters(string answer, string expected, double score) =>
        Assert.Equal(score, ChoiceMatch.Score(answer, [expected]));

    [Fact]
    public void NegativeLogLikelihood_MatchesLogSoftmax()
    {
        // logits (0, ln 3): softmax = (1/4, 3/4).
        float[] logits = [0f, (float)Math.Log(3)];
        Assert.Equal(Math.Log(4), LanguageModelMetrics.NegativeLogLikelihood(logits, 0), 6);
        Assert.Equal(Math.Log(4 / 3.0), LanguageModelMetrics.NegativeLogLikelihood(logits, 1), 6);
    }

    [Fact]
    public void KlDivergence_MatchesTheHandComputedValue()
    {
        // P = (1/2, 1/2), Q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
        float[] p = [1f, 1f];
        float[] q = [0f, (float)Math.Log(3)];
        Assert.Equal(0.5 * Math.Log(2) + 0.5 * Math.Log(2 / 3.0), LanguageModelMetrics.KlDivergence(p, q), 6);
        Assert.Equal(0, LanguageModelMetrics.KlDivergence(q, q), 12);
    }

    [Fact]
    public void Compare_AveragesOverPositions()
    {
        // Two positions, vocabulary 2. Reference rows: (1/2,1/2), (1/4,3/4); compressed: (1/4,3/4) twice. Targets 1, 1.
        float l3 = (float)Math.Log(3);
        float[] reference = [0f, 0f, 0f, l3];
        float[] compressed = [0f, l3, 0f, l3];
        var q = LanguageModelMetrics.Compare(reference, compressed, [1, 1], 2);
        Assert.Equal(2, q.Tokens);
        Assert.Equal(4 / 3.0, q.Perplexity, 6);                               // exp(mean(ln 4/3, ln 4/3))
        Assert.Equal(Math.Exp((Math.Log(2) + Math.Log(4 / 3.0)) / 2), q.ReferencePerplexity, 6);
        Assert.Equal((0.5 * Math.Log(2) + 0.5 * Math.Log(2 / 3.0)) / 2, q.MeanKl, 6);
        Assert.Equal(0.5, q.Top1Agreement); // position 0: reference ties → token 0; compressed → token 1
    }

    [Fact]
    public void BaselineComparison_HandlesBudgetCutsAndRunOns()
    {
        Assert.True(KvSharp.Evaluation.Running.BaselineComparison.Agrees(" 3148345.", " 3148345.\nWhat is"));
        Assert.False(KvSharp.Evaluation.Running.BaselineComparison.Agrees(" 3148346.", " 3148345.\nWhat is"));
        Assert.True(KvSharp.Evaluation.Running.BaselineComparison.Agrees(" 3349293, 1259561, 3349293.", " 3349293, 1259561, 334"));
        Assert.False(KvSharp.Evaluation.Running.BaselineComparison.Agrees("", " 1"));
    }

    [Fact]
    public void RougeTokens_AreLowerCasedAlphanumericRuns() =>
        Assert.Equal(["hello", "world", "it", "s", "2024", "ok"], Rouge.Tokenize("Hello, World! It's 2024\u2014ok."));

    [Fact]
    public void Rouge_MatchesHandCountedOverlaps()
    {
        // rouge_score's README example. Prediction: the quick brown dog jumps on the log (8 tokens);
        // reference: the quick brown fox jumps over the lazy dog (9 tokens).
        var r = Rouge.Score("The quick brown dog jumps on the log.", ["The quick brown fox jumps over the lazy dog"]);
        // Unigrams in common: the x2, quick, brown, dog, jumps = 6 -> P 6/8, R 6/9.
        Assert.Equal(F1(6 / 8.0, 6 / 9.0), r.Rouge1, 12);
        Assert.Equal(0.70588235, r.Rouge1, 6);
        // Bigrams in common: "the quick", "quick brown" = 2 of 7 and 8.
        Assert.Equal(F1(2 / 7.0, 2 / 8.0), r.Rouge2, 12);
        // LCS: the quick brown jumps the = 5 -> P 5/8, R 5/9 (README: 0.58823529).
        Assert.Equal(F1(5 / 8.0, 5 / 9.0), r.RougeL, 12);
        Assert.Equal(0.58823529, r.RougeL, 6);

        // Clipped counts: "the the the" against "the cat": 1 unigram in common, not 3.
        Assert.Equal(F1(1 / 3.0, 1 / 2.0), Rouge.Score("the the the", ["the cat"]).Rouge1, 12);
        // LCS of different orders: "a b c d" vs "d c b a" has length 1.
        Assert.Equal(1, Rouge.LcsLength(["a", "b", "c", "d"], ["d", "c", "b", "a"]));
        Assert.Equal(3, Rouge.LcsLength(["a", "x", "b", "y", "c"], ["a", "b", "c"]));
    }

    [Fact]
    public void Rouge_TakesTheBestReferenceAndScoresNothingAsZero()
    {
        var best = Rouge.Score("police killed the gunman", ["completely unrelated words", "the gunman was shot dead by police"]);
        // Against the second: unigrams police, the, gunman (P 3/4, R 3/7); bigram "the gunman" (P 1/3, R 1/6); LCS "the gunman" (P 2/4, R 2/7).
        Assert.Equal(6 / 11.0, best.Rouge1, 12);
        Assert.Equal(2 / 9.0, best.Rouge2, 12);
        Assert.Equal(4 / 11.0, best.RougeL, 12);
        Assert.Equal(new RougeScores(0, 0, 0), Rouge.Score("", ["a reference"]));
        Assert.Equal(new RougeScores(0, 0, 0), Rouge.Score("!!!", ["a reference"]));
        Assert.Equal(4 / 11.0, StringMatch.Score(KvSharp.Evaluation.Tasks.ScoreKind.RougeL, "police killed the gunman", ["the gunman was shot dead by police"]), 12);
    }

    [Fact]
    public void CellSummary_AveragesRougeOverQueries()
    {
        static KvSharp.Evaluation.Running.SampleOutcome Outcome(params RougeScores[] r) => new()
        {
            Task = "news_summ",
            Id = "0",
            Queries = r.Select(x => new KvSharp.Evaluation.Running.QueryOutcome("a", x.RougeL, ["b"], null, null, x)).ToList(),
            Score = r.Average(x => x.RougeL),
        };
        var identity = new KvSharp.Evaluation.Running.CellResult { Key = "k", Model = "m", Task = "leval:news_summ", Press = "none", Compressor = "none", KvCache = "F32" };
        var cell = KvSharp.Evaluation.Running.CellResult.Summarize(identity, [Outcome(new RougeScores(0.5, 0.2, 0.4)), Outcome(new RougeScores(0.3, 0.1, 0.2), new RougeScores(0.1, 0, 0.0))], DateTime.UnixEpoch);
        Assert.Equal(0.3, cell.Rouge1!.Value, 12);
        Assert.Equal(0.1, cell.Rouge2!.Value, 12);
        Assert.Equal(0.2, cell.RougeL!.Value, 12);
        Assert.Equal((0.4 + 0.1) / 2, cell.Score, 12); // the mean over samples of each sample's mean
    }

    private static double F1(double precision, double recall) => 2 * precision * recall / (precision + recall);
}
