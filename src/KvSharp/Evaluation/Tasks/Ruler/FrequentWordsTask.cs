namespace KvSharp.Evaluation.Tasks.Ruler;

/// <summary>
/// RULER's frequent-words extraction (scripts/data/synthetic/freq_words_extraction.py): coded words drawn with Zipf
/// frequencies (exponent <see cref="Alpha"/>); the most frequent is replaced by the noise "...", and the answer is
/// the next three.
/// </summary>
/// <param name="Alpha">Zipf exponent.</param>
/// <param name="VocabularySize">Distinct coded words.</param>
/// <param name="WordLength">Letters per coded word.</param>
public sealed record FrequentWordsTask(double Alpha = 2.0, int VocabularySize = 2000, int WordLength = 6) : IRulerTask
{
    /// <inheritdoc />
    public string Name => "fwe";

    /// <inheritdoc />
    public int TokensToGenerate => 50;

    /// <inheritdoc />
    public ScoreKind Score => ScoreKind.StringMatchAll;

    /// <inheritdoc />
    public int Increment => 10;

    /// <inheritdoc />
    public (string Input, IReadOnlyList<string> Outputs) Generate(int size, RulerRandom random)
    {
        var vocabulary = new List<string>();
        var seen = new HashSet<string>();
        while (vocabulary.Count < VocabularySize)
        {
            string w = random.Letters(WordLength, upper: false);
            if (seen.Add(w)) vocabulary.Add(w);
        }
        vocabulary[0] = "..."; // the most frequent word is noise
        double zeta = Zeta(Alpha);
        var words = new List<string>();
        for (int k = 1; k <= vocabulary.Count; k++)
            words.AddRange(Enumerable.Repeat(vocabulary[k - 1], (int)(size * Math.Pow(k, -Alpha) / zeta)));
        random.Shuffle(words);
        string input = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. " +
                       $"{string.Join(' ', words)}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text? " +
                       "Answer: According to the coded text above, the three most frequently appeared words are:";
        return (input, vocabulary.GetRange(1, 3));
    }

    /// <summary>Riemann zeta ζ(s) for s &gt; 1 (partial sum plus the Euler–Maclaurin tail).</summary>
    public static double Zeta(double s)
    {
        if (s <= 1) throw new KvSharpException($"the Zipf exponent must be > 1, got {s}");
        const int n = 1000;
        double sum = 0;
        for (int k = 1; k < n; k++) sum += Math.Pow(k, -s);
        // Tail Σ_{k≥n} k^-s ≈ n^(1-s)/(s-1) + n^-s/2 + s·n^(-s-1)/12.
        return sum + Math.Pow(n, 1 - s) / (s - 1) + Math.Pow(n, -s) / 2 + s * Math.Pow(n, -s - 1) / 12;
    }
}
