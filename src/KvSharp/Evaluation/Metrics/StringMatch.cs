using KvSharp.Evaluation.Tasks;

namespace KvSharp.Evaluation.Metrics;

/// <summary>RULER's answer scores (scripts/eval/synthetic/constants.py), per answer in [0, 1] instead of a percentage.</summary>
public static class StringMatch
{
    /// <summary>string_match_all: the fraction of <paramref name="expected"/> strings that <paramref name="answer"/> contains, ignoring case.</summary>
    public static double All(string answer, IReadOnlyList<string> expected)
    {
        if (expected.Count == 0) throw new KvSharpException("a query needs at least one expected output");
        return expected.Count(e => Contains(answer, e)) / (double)expected.Count;
    }

    /// <summary>string_match_part: 1 when <paramref name="answer"/> contains any of <paramref name="expected"/>, ignoring case; else 0.</summary>
    public static double Part(string answer, IReadOnlyList<string> expected)
    {
        if (expected.Count == 0) throw new KvSharpException("a query needs at least one expected output");
        return expected.Any(e => Contains(answer, e)) ? 1 : 0;
    }

    /// <summary>Scores <paramref name="answer"/> the way <paramref name="kind"/> says.</summary>
    public static double Score(ScoreKind kind, string answer, IReadOnlyList<string> expected) => kind switch
    {
        ScoreKind.StringMatchAll => All(answer, expected),
        ScoreKind.StringMatchPart => Part(answer, expected),
        ScoreKind.Choice => ChoiceMatch.Score(answer, expected),
        ScoreKind.RougeL => Rouge.Score(answer, expected).RougeL,
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    // Python's str.lower() on both sides, then substring: invariant lower-casing is the closest .NET equivalent.
    private static bool Contains(string answer, string expected) =>
        answer.ToLowerInvariant().Contains(expected.ToLowerInvariant(), StringComparison.Ordinal);
}
