namespace KvSharp.Evaluation.Tasks.Ruler;

/// <summary>
/// RULER's common-words extraction (scripts/data/synthetic/common_words_extraction.py): a numbered list where 10
/// words appear <see cref="CommonRepeats"/> times and the rest <see cref="UncommonRepeats"/> times; the answer is the
/// 10 common words. Words come from the essays' vocabulary (RULER uses the wonderwords lists); no few-shot example.
/// </summary>
/// <param name="Essays">Source of the vocabulary.</param>
/// <param name="CommonRepeats">Occurrences of each common word (RULER: 30 at 4K tokens and beyond, 6 below).</param>
/// <param name="UncommonRepeats">Occurrences of each other word (RULER: 3, 1 below 4K).</param>
/// <param name="CommonCount">Common words (the answer's size).</param>
public sealed record CommonWordsTask(Haystack Essays, int CommonRepeats, int UncommonRepeats, int CommonCount = 10) : IRulerTask
{
    /// <inheritdoc />
    public string Name => "cwe";

    /// <inheritdoc />
    public int TokensToGenerate => 120;

    /// <inheritdoc />
    public ScoreKind Score => ScoreKind.StringMatchAll;

    /// <inheritdoc />
    public int Increment => 10;

    /// <summary>RULER's repeat counts for a task of <paramref name="length"/> tokens.</summary>
    public static CommonWordsTask ForLength(Haystack essays, int length) =>
        length >= 4096 ? new CommonWordsTask(essays, 30, 3) : new CommonWordsTask(essays, 6, 1);

    /// <inheritdoc />
    public (string Input, IReadOnlyList<string> Outputs) Generate(int size, RulerRandom random)
    {
        var vocabulary = Essays.Vocabulary();
        int words = Math.Min(Math.Max(size, CommonCount + 1), vocabulary.Count);
        var chosen = random.Sample(vocabulary, words);
        var common = chosen.GetRange(0, CommonCount);
        var list = new List<string>();
        foreach (var w in common) list.AddRange(Enumerable.Repeat(w, CommonRepeats));
        foreach (var w in chosen.Skip(CommonCount)) list.AddRange(Enumerable.Repeat(w, UncommonRepeats));
        random.Shuffle(list);
        string context = string.Join(' ', list.Select((w, i) => $"{i + 1}. {w}"));
        string input = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n" +
                       $"{context}\nQuestion: What are the {CommonCount} most common words in the above list? Answer: The top {CommonCount} words that appear most often in the list are:";
        return (input, common);
    }
}
