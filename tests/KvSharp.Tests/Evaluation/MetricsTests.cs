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
}
