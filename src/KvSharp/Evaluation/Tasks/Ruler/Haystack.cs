using System.Text.RegularExpressions;

namespace KvSharp.Evaluation.Tasks.Ruler;

/// <summary>
/// The filler text needles hide in: Paul Graham's essays (RULER's <c>essay</c> haystack, as a stream of words) or
/// RULER's repeated <c>noise</c> paragraph.
/// </summary>
public sealed partial class Haystack
{
    /// <summary>RULER's noise haystack: one paragraph repeated.</summary>
    public const string NoiseParagraph = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

    private readonly string[]? _words;
    private readonly Lazy<IReadOnlyList<string>> _vocabulary;

    private Haystack(string[]? words)
    {
        _words = words;
        _vocabulary = new Lazy<IReadOnlyList<string>>(BuildVocabulary); // generators draw from it once per sample
    }

    /// <summary>The noise haystack.</summary>
    public static Haystack Noise { get; } = new(null);

    /// <summary>Whether this is the essay haystack.</summary>
    public bool IsEssay => _words != null;

    /// <summary>All words of the essays in <paramref name="directory"/> (<c>*.txt</c>, in name order), whitespace collapsed.</summary>
    public static Haystack Essays(string directory)
    {
        if (!Directory.Exists(directory)) throw new KvSharpException($"{directory}: essay folder not found");
        var files = Directory.GetFiles(directory, "*.txt").Order(StringComparer.Ordinal).ToArray();
        if (files.Length == 0) throw new KvSharpException($"{directory}: no .txt essays");
        var words = files.SelectMany(f => Whitespace().Split(File.ReadAllText(f))).Where(w => w.Length > 0).ToArray();
        return new Haystack(words);
    }

    /// <summary>The first <paramref name="count"/> essay words (repeating the essays when they run out), joined by spaces.</summary>
    public string Words(int count)
    {
        var words = _words ?? throw new InvalidOperationException("the noise haystack has no words");
        return string.Join(' ', Enumerable.Range(0, count).Select(i => words[i % words.Length]));
    }

    /// <summary>
    /// Distinct lower-case alphabetic words of the essays (4 to 10 letters), sorted: the vocabulary for word keys
    /// and word lists (RULER draws these from the wonderwords lists, which are not available here).
    /// </summary>
    public IReadOnlyList<string> Vocabulary() => _vocabulary.Value;

    private string[] BuildVocabulary() =>
        (_words ?? throw new InvalidOperationException("the noise haystack has no words"))
            .Select(w => w.Trim('.', ',', ';', ':', '?', '!', '"', '\'', '(', ')'))
            .Where(w => w.Length is >= 4 and <= 10 && w.All(c => c is >= 'a' and <= 'z'))
            .Distinct().Order(StringComparer.Ordinal).ToArray();

    /// <summary>Splits text into sentences after '.', '!' or '?' followed by whitespace (a light stand-in for NLTK's sent_tokenize).</summary>
    public static IReadOnlyList<string> Sentences(string text) =>
        SentenceEnd().Split(text.Trim()).Where(s => s.Length > 0).ToArray();

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();

    [GeneratedRegex(@"(?<=[.!?])\s+")]
    private static partial Regex SentenceEnd();
}
