using System.Globalization;

namespace KvSharp.Evaluation.Tasks.Ruler;

/// <summary>
/// RULER's variable tracking (scripts/data/synthetic/variable_tracking.py, noise haystack): chains
/// "VAR A = 12345", "VAR B = VAR A", ... hidden in order among noise lines; the answer is every variable of the
/// first chain. The template keeps RULER's original "assgined" spelling, as the needle model saw it in training.
/// RULER's one-shot example is left out, as in eval_public.jsonl.
/// </summary>
/// <param name="Chains">Chains hidden (one is asked for).</param>
/// <param name="Hops">Assignments after the first in each chain.</param>
public sealed record VariableTrackingTask(int Chains = 1, int Hops = 4) : IRulerTask
{
    /// <inheritdoc />
    public string Name => "vt";

    /// <inheritdoc />
    public int TokensToGenerate => 30;

    /// <inheritdoc />
    public ScoreKind Score => ScoreKind.StringMatchAll;

    /// <inheritdoc />
    public int Increment => 10;

    /// <inheritdoc />
    public (string Input, IReadOnlyList<string> Outputs) Generate(int size, RulerRandom random)
    {
        var names = new List<string>();
        var seen = new HashSet<string>();
        while (names.Count < Chains * (Hops + 1))
        {
            string v = random.Letters(5);
            if (seen.Add(v)) names.Add(v);
        }
        var chains = new List<List<string>>();
        string value = "";
        for (int c = 0; c < Chains; c++)
        {
            var vars = names.GetRange(c * (Hops + 1), Hops + 1);
            string start = random.Next(10000, 100000).ToString(CultureInfo.InvariantCulture);
            if (c == 0) value = start;
            var chain = new List<string> { $"VAR {vars[0]} = {start}" };
            for (int j = 0; j < Hops; j++) chain.Add($"VAR {vars[j + 1]} = VAR {vars[j]} ");
            chains.Add(chain);
        }
        // At least as many noise lines as one chain has statements, so each statement gets a line of its own to follow.
        var lines = Enumerable.Repeat(Haystack.NoiseParagraph, Math.Max(size, Hops + 1)).ToList();
        foreach (var chain in chains)
        {
            var at = random.Sample(Enumerable.Range(0, lines.Count).ToArray(), chain.Count).Order().ToList();
            for (int j = 0; j < chain.Count; j++) lines.Insert(at[j] + j, chain[j]);
        }
        string context = string.Join('\n', lines).Replace(". \n", ".\n", StringComparison.Ordinal);
        string input = $"Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n" +
                       $"Question: Find all variables that are assigned the value {value} in the text above. " +
                       $"Answer: According to the chain(s) of variable assignment in the text above, {Hops + 1} variables are assgined the value {value}, they are:";
        return (input, names.GetRange(0, Hops + 1));
    }
}
