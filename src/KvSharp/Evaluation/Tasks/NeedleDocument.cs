using System.Text;

namespace KvSharp.Evaluation.Tasks;

/// <summary>One hidden fact: "One of the special magic numbers for {Key} is: {Value}."</summary>
/// <param name="Key">The number the question names.</param>
/// <param name="Value">The number the answer must contain.</param>
public sealed record NeedleFact(string Key, string Value);

/// <summary>
/// A long document in RULER's needle-in-a-haystack format (noise haystack: "The grass is green. ..."),
/// with several facts hidden at spread-out depths, and the questions that retrieve them — the format
/// the kvsharp-needle-16m model was trained on. Needs no data files, so the demo runs anywhere.
/// </summary>
public sealed class NeedleDocument
{
    private const string Intro = "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about the number afterwards.\n";
    private static readonly string[] Noise = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."];

    private NeedleDocument(string context, IReadOnlyList<NeedleFact> facts) { Context = context; Facts = facts; }

    /// <summary>The document to prefill (intro, haystack with the facts, ending with a newline).</summary>
    public string Context { get; }

    /// <summary>The hidden facts, in document order.</summary>
    public IReadOnlyList<NeedleFact> Facts { get; }

    /// <summary>The question for <paramref name="fact"/>, which the model completes with " {value}.".</summary>
    public static string Question(NeedleFact fact) =>
        $"What is the special magic number for {fact.Key} mentioned in the provided text? The special magic number for {fact.Key} mentioned in the provided text is";

    /// <summary>
    /// Builds a document of about <paramref name="noiseSentences"/> haystack sentences (~6 tokens each)
    /// with <paramref name="factCount"/> facts of random 7-digit keys and values, deterministic in <paramref name="seed"/>.
    /// </summary>
    public static NeedleDocument Create(int noiseSentences, int factCount, int seed)
    {
        if (noiseSentences < 1) throw new KvSharpException($"the haystack needs at least one sentence, got {noiseSentences}");
        if (factCount < 1) throw new KvSharpException($"hide at least one fact, got {factCount}");
        var rng = new Random(seed);
        var facts = new List<NeedleFact>();
        var used = new HashSet<string>();
        string Number() { string s; do s = rng.Next(1_000_000, 10_000_000).ToString(System.Globalization.CultureInfo.InvariantCulture); while (!used.Add(s)); return s; }
        for (int i = 0; i < factCount; i++) facts.Add(new NeedleFact(Number(), Number()));

        // Facts at evenly spread depths (10% .. 90%) so retrieval spans the whole document.
        var depths = Enumerable.Range(0, factCount).Select(i => (int)(noiseSentences * (0.1 + 0.8 * i / Math.Max(1, factCount - 1)))).ToArray();
        if (factCount == 1) depths[0] = noiseSentences / 2;
        var sb = new StringBuilder(Intro);
        int next = 0;
        for (int s = 0; s < noiseSentences; s++)
        {
            while (next < factCount && depths[next] == s)
            {
                sb.Append($"One of the special magic numbers for {facts[next].Key} is: {facts[next].Value}. ");
                next++;
            }
            sb.Append(Noise[s % Noise.Length]);
            sb.Append(s + 1 < noiseSentences ? ' ' : '\n');
        }
        return new NeedleDocument(sb.ToString(), facts);
    }
}
