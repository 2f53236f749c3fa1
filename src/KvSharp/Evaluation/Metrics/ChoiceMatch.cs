using System.Text.RegularExpressions;

namespace KvSharp.Evaluation.Metrics;

/// <summary>
/// Multiple-choice scoring (L-Eval's exam tasks: QuALITY, TOEFL, Coursera): the option letters an answer picks,
/// compared as a set with the expected letters (Coursera questions may have several, e.g. "BD").
/// </summary>
public static partial class ChoiceMatch
{
    /// <summary>1 when the letters <paramref name="answer"/> picks equal the letters of <paramref name="expected"/>[0]; else 0.</summary>
    public static double Score(string answer, IReadOnlyList<string> expected)
    {
        if (expected.Count == 0) throw new KvSharpException("a multiple-choice query needs its expected letters");
        var want = Letters(expected[0]);
        if (want.Count == 0) throw new KvSharpException($"expected answer '{expected[0]}' names no option letter A-D");
        return want.SetEquals(Letters(answer)) ? 1 : 0;
    }

    /// <summary>
    /// The option letters (A-D) an answer picks: a leading run of letters ("BD", "A, C", "(B) because ..."),
    /// else letters written as "(X)" or "option X" anywhere.
    /// </summary>
    public static IReadOnlySet<char> Letters(string answer)
    {
        var letters = new HashSet<char>();
        int at = 0;
        for (var m = FirstLetters().Match(answer); m.Success; m = NextLetter().Match(answer, at))
        {
            if (m.Index != at) break; // only a run at the start counts
            foreach (char c in m.Groups[1].Value) letters.Add(c);
            at = m.Index + m.Length;
            if (at >= answer.Length) break;
        }
        if (letters.Count > 0) return letters;
        return Marked().Matches(answer).Select(m => char.ToUpperInvariant(m.Groups[1].Value[0])).ToHashSet();
    }

    // "B", "BD", "(B) ...", "B." at the start: up to four letters A-D not followed by another letter.
    [GeneratedRegex(@"\G\s*\(?([A-D]{1,4})\)?(?![A-Za-z])", RegexOptions.CultureInvariant)]
    private static partial Regex FirstLetters();

    // ", C", " and D" after a letter.
    [GeneratedRegex(@"\G[\s,;.]*(?:and\s+)?\(?([A-D])\)?(?![A-Za-z])", RegexOptions.CultureInvariant)]
    private static partial Regex NextLetter();

    [GeneratedRegex(@"(?:\(|\boption\s+)([A-D])\b", RegexOptions.CultureInvariant | RegexOptions.IgnoreCase)]
    private static partial Regex Marked();
}
