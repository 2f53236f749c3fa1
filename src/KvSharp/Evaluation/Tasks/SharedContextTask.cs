using KvSharp.Evaluation.Tasks.Ruler;

namespace KvSharp.Evaluation.Tasks;

/// <summary>
/// SCBench-style shared context: one RULER needle haystack (essays, or noise) hiding <see cref="Facts"/> number
/// facts, and one question per fact. <see cref="ContextSharing.MultiRequest"/> asks each against the same compressed
/// context; <see cref="ContextSharing.MultiTurn"/> asks them as turns, each question and answer staying in the cache.
/// The length counts the context and every question with its answer budget.
/// </summary>
/// <param name="Facts">Facts hidden, one question each.</param>
/// <param name="Sharing">How the questions share the context.</param>
/// <param name="Essays">The essay haystack; null for RULER's noise haystack.</param>
public sealed record SharedContextTask(int Facts, ContextSharing Sharing, Haystack? Essays) : IRulerTask
{
    private const int AnswerBudget = 16;

    /// <inheritdoc />
    public string Name => Sharing == ContextSharing.MultiTurn ? "shared_turns" : "shared_requests";

    /// <inheritdoc />
    public int TokensToGenerate => AnswerBudget * Facts;

    /// <inheritdoc />
    public ScoreKind Score => ScoreKind.StringMatchAll;

    /// <inheritdoc />
    public int Increment => Essays != null ? 500 : 25;

    /// <inheritdoc />
    public (string Input, IReadOnlyList<string> Outputs) Generate(int size, RulerRandom random)
    {
        var sample = Build(size, random, "0");
        return (sample.Context + string.Concat(sample.Queries.Select(q => q.Question + "\n")), sample.Queries.SelectMany(q => q.Outputs).ToList());
    }

    /// <summary>The sample of a haystack of <paramref name="size"/> units: the context and one question per fact.</summary>
    public EvalSample Build(int size, RulerRandom random, string id)
    {
        var keys = new List<string>();
        var values = new List<string>();
        var used = new HashSet<string>();
        string Fresh() { string s; do s = random.Number(); while (!used.Add(s)); return s; }
        for (int i = 0; i < Facts; i++) { keys.Add(Fresh()); values.Add(Fresh()); }
        var needles = keys.Select((k, i) => $"One of the special magic numbers for {k} is: {values[i]}.").ToList();

        List<string> parts;
        char joint;
        if (Essays != null)
        {
            parts = Haystack.Sentences(Essays.Words(size)).ToList();
            joint = ' ';
        }
        else
        {
            parts = Enumerable.Repeat(Haystack.NoiseParagraph, size).ToList();
            joint = '\n';
        }
        while (parts.Count < needles.Count) parts.Add(Haystack.NoiseParagraph); // a haystack too small to spread the facts
        var at = random.Sample(Enumerable.Range(0, parts.Count + 1).ToArray(), needles.Count).OrderDescending().ToList();
        for (int i = 0; i < needles.Count; i++) parts.Insert(at[i], needles[i]);
        string context = "Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you about the numbers afterwards.\n"
                         + string.Join(joint, parts) + "\n";
        var order = random.Sample(Enumerable.Range(0, Facts).ToArray(), Facts);
        var queries = order.Select(i => new EvalQuery(
            $"What is the special magic number for {keys[i]} mentioned in the provided text? The special magic number for {keys[i]} mentioned in the provided text is",
            [values[i]])).ToList();
        return new EvalSample(id, Name, context, queries, ScoreKind.StringMatchAll, AnswerBudget, Sharing);
    }
}
