using System.Text.RegularExpressions;

namespace KvSharp.Evaluation.Metrics;

/// <summary>ROUGE F1 scores of one answer against its reference(s), each in [0, 1].</summary>
/// <param name="Rouge1">Unigram overlap F1.</param>
/// <param name="Rouge2">Bigram overlap F1.</param>
/// <param name="RougeL">Longest-common-subsequence F1.</param>
public sealed record RougeScores(double Rouge1, double Rouge2, double RougeL);

/// <summary>
/// ROUGE-1/2/L as Google's rouge_score package computes them without stemming (what L-Eval's summarization tasks
/// report): text lower-cased, every run of characters other than a-z and 0-9 a separator; ROUGE-N counts n-grams
/// clipped to the smaller count on each side; ROUGE-L uses the longest common subsequence of tokens; each is the F1 of
/// precision (over the candidate) and recall (over the reference), 0 when either side has no n-gram. With several
/// references each score is the best over them.
/// </summary>
public static partial class Rouge
{
    /// <summary>rouge_score's default tokens: lower-cased runs of a-z / 0-9.</summary>
    public static IReadOnlyList<string> Tokenize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return NonAlphanumeric().Split(text.ToLowerInvariant()).Where(t => t.Length > 0).ToList();
    }

    /// <summary>ROUGE-1, ROUGE-2 and ROUGE-L F1 of <paramref name="candidate"/>, each the best over <paramref name="references"/>.</summary>
    public static RougeScores Score(string candidate, IReadOnlyList<string> references)
    {
        ArgumentNullException.ThrowIfNull(references);
        if (references.Count == 0) throw new KvSharpException("a query needs at least one reference for ROUGE");
        var c = Tokenize(candidate);
        var refs = references.Select(Tokenize).ToList();
        return new RougeScores(refs.Max(r => NGramF1(c, r, 1)), refs.Max(r => NGramF1(c, r, 2)), refs.Max(r => LcsF1(c, r)));
    }

    /// <summary>ROUGE-N F1 of token lists.</summary>
    public static double NGramF1(IReadOnlyList<string> candidate, IReadOnlyList<string> reference, int n)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n));
        var c = NGrams(candidate, n);
        var r = NGrams(reference, n);
        int overlap = c.Sum(p => r.TryGetValue(p.Key, out int count) ? Math.Min(p.Value, count) : 0);
        return F1(overlap, c.Values.Sum(), r.Values.Sum());
    }

    /// <summary>ROUGE-L F1 of token lists: the longest common subsequence over the candidate's and the reference's lengths.</summary>
    public static double LcsF1(IReadOnlyList<string> candidate, IReadOnlyList<string> reference) =>
        F1(LcsLength(candidate, reference), candidate.Count, reference.Count);

    /// <summary>Length of the longest common subsequence (two rows of the dynamic program: O(|a|·|b|) time, O(|b|) memory).</summary>
    public static int LcsLength(IReadOnlyList<string> a, IReadOnlyList<string> b)
    {
        var previous = new int[b.Count + 1];
        var current = new int[b.Count + 1];
        for (int i = 1; i <= a.Count; i++)
        {
            for (int j = 1; j <= b.Count; j++)
                current[j] = a[i - 1] == b[j - 1] ? previous[j - 1] + 1 : Math.Max(previous[j], current[j - 1]);
            (previous, current) = (current, previous);
        }
        return previous[b.Count];
    }

    private static Dictionary<string, int> NGrams(IReadOnlyList<string> tokens, int n)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i + n <= tokens.Count; i++)
        {
            // Tokens hold only a-z0-9, so a space joins them unambiguously.
            string gram = string.Join(' ', tokens.Skip(i).Take(n));
            counts[gram] = counts.GetValueOrDefault(gram) + 1;
        }
        return counts;
    }

    private static double F1(int overlap, int candidateCount, int referenceCount)
    {
        if (overlap == 0 || candidateCount == 0 || referenceCount == 0) return 0;
        double precision = overlap / (double)candidateCount, recall = overlap / (double)referenceCount;
        return 2 * precision * recall / (precision + recall);
    }

    [GeneratedRegex("[^a-z0-9]+")]
    private static partial Regex NonAlphanumeric();
}
