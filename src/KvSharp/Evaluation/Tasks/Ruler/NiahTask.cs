namespace KvSharp.Evaluation.Tasks.Ruler;

/// <summary>What needle keys and values are made of.</summary>
public enum NeedleKind
{
    /// <summary>7-digit numbers.</summary>
    Numbers,
    /// <summary>Hyphenated word pairs.</summary>
    Words,
    /// <summary>Version-4 UUIDs.</summary>
    Uuids,
}

/// <summary>What fills the haystack.</summary>
public enum HaystackKind
{
    /// <summary>Paul Graham's essays.</summary>
    Essay,
    /// <summary>RULER's repeated noise paragraph.</summary>
    Noise,
    /// <summary>Distractor needles with other keys.</summary>
    Needle,
}

/// <summary>
/// RULER's needle in a haystack (scripts/data/synthetic/niah.py): <see cref="Keys"/> keys with <see cref="Values"/>
/// values each are hidden as "One of the special magic {numbers} for {key} is: {value}." at random depths, and
/// <see cref="Queries"/> of the keys are asked for.
/// </summary>
/// <param name="Name">Task name.</param>
/// <param name="Haystack">Filler kind.</param>
/// <param name="KeyKind">What keys are.</param>
/// <param name="ValueKind">What values are.</param>
/// <param name="Keys">Keys hidden.</param>
/// <param name="Values">Values per key.</param>
/// <param name="Queries">Keys asked for.</param>
/// <param name="Essays">The essay haystack (required for <see cref="HaystackKind.Essay"/> and for word keys).</param>
public sealed record NiahTask(string Name, HaystackKind Haystack, NeedleKind KeyKind, NeedleKind ValueKind, int Keys, int Values, int Queries, Haystack? Essays) : IRulerTask
{
    // RULER's needle depths: 40 evenly spaced percentages 0..100, rounded.
    private static readonly int[] Depths = Enumerable.Range(0, 40).Select(i => (int)Math.Round(i * 100.0 / 39, MidpointRounding.ToEven)).ToArray();
    private IReadOnlyList<string>? _vocabulary;

    /// <inheritdoc />
    public int TokensToGenerate => 128;

    /// <inheritdoc />
    public ScoreKind Score => ScoreKind.StringMatchAll;

    /// <inheritdoc />
    public int Increment => Haystack == HaystackKind.Essay ? 500 : 25;

    /// <inheritdoc />
    public (string Input, IReadOnlyList<string> Outputs) Generate(int size, RulerRandom random)
    {
        int keys = Math.Max(Keys, Queries);
        var keyList = new List<string>();
        var values = new List<List<string>>();
        var needles = new List<string>();
        string typeV = Plural(ValueKind);
        for (int k = 0; k < keys; k++)
        {
            keyList.Add(Draw(KeyKind, random));
            var v = new List<string>();
            for (int j = 0; j < Values; j++)
            {
                v.Add(Draw(ValueKind, random));
                needles.Add(Needle(typeV, keyList[^1], v[^1]));
            }
            values.Add(v);
        }
        random.Shuffle(needles);

        string context;
        if (Haystack == HaystackKind.Essay)
        {
            var essays = Essays ?? throw new KvSharpException($"{Name}: the essay haystack needs the essays folder");
            var sentences = Ruler.Haystack.Sentences(essays.Words(size));
            var at = random.Sample(Depths, needles.Count).Select(d => (int)(sentences.Count * (d / 100.0))).Order().ToList();
            var parts = new List<string>();
            int last = 0;
            for (int i = 0; i < needles.Count; i++)
            {
                parts.Add(string.Join(' ', sentences.Skip(last).Take(at[i] - last)));
                parts.Add(needles[i]);
                last = at[i];
            }
            parts.Add(string.Join(' ', sentences.Skip(last)));
            context = string.Join(' ', parts);
        }
        else
        {
            int slots = Math.Max(size, needles.Count); // each needle needs a distinct slot
            var sentences = Haystack == HaystackKind.Noise
                ? Enumerable.Repeat(Ruler.Haystack.NoiseParagraph, slots).ToList()
                : Enumerable.Range(0, slots).Select(_ => Needle(typeV, Draw(KeyKind, random), Draw(ValueKind, random))).ToList();
            var at = random.Sample(Enumerable.Range(0, slots).ToArray(), needles.Count).OrderDescending().ToList();
            for (int i = 0; i < needles.Count; i++) sentences.Insert(at[i], needles[i]);
            context = string.Join('\n', sentences);
        }

        var asked = random.Sample(Enumerable.Range(0, keys).ToArray(), Queries);
        var queries = asked.Select(i => keyList[i]).ToList();
        var answers = asked.SelectMany(i => values[i]).ToList();
        string query = queries.Count > 1 ? string.Join(", ", queries.Take(queries.Count - 1)) + ", and " + queries[^1] : queries[0];
        return (Prompt(context, query, Queries * Values == 1, typeV), answers);
    }

    /// <summary>RULER's niah template with its answer prefix; singular wording when one value is asked for.</summary>
    public static string Prompt(string context, string query, bool single, string pluralType)
    {
        if (single)
        {
            string t = pluralType[..^1];
            return $"A special magic {t} is hidden within the following text. Make sure to memorize it. I will quiz you about the {t} afterwards.\n{context}\n" +
                   $"What is the special magic {t} for {query} mentioned in the provided text? The special magic {t} for {query} mentioned in the provided text is";
        }
        return $"Some special magic {pluralType} are hidden within the following text. Make sure to memorize it. I will quiz you about the {pluralType} afterwards.\n{context}\n" +
               $"What are all the special magic {pluralType} for {query} mentioned in the provided text? The special magic {pluralType} for {query} mentioned in the provided text are";
    }

    private static string Needle(string typeV, string key, string value) => $"One of the special magic {typeV} for {key} is: {value}.";

    private static string Plural(NeedleKind kind) => kind switch
    {
        NeedleKind.Numbers => "numbers",
        NeedleKind.Words => "words",
        _ => "uuids",
    };

    private string Draw(NeedleKind kind, RulerRandom random)
    {
        switch (kind)
        {
            case NeedleKind.Numbers: return random.Number();
            case NeedleKind.Uuids: return random.Uuid();
            default:
                var vocabulary = _vocabulary ??= (Essays ?? throw new KvSharpException($"{Name}: word needles need the essays folder")).Vocabulary();
                return $"{random.Choice(vocabulary)}-{random.Choice(vocabulary)}";
        }
    }
}
