using KvSharp.Tokenization;

namespace KvSharp.Evaluation.Tasks.Ruler;

/// <summary>
/// Generates RULER records of a task at a token length: finds the largest haystack whose prompt plus answer budget fits
/// <c>length</c> tokens of the model's tokenizer (binary search, as RULER does), then draws each sample from its own
/// seed (seed, index), shrinking its haystack in steps of at most 5% when the draw comes out too long.
/// </summary>
public sealed class RulerGenerator
{
    private readonly ITokenizer _tokenizer;

    /// <summary>A generator measuring lengths with <paramref name="tokenizer"/> (BOS included).</summary>
    public RulerGenerator(ITokenizer tokenizer) { _tokenizer = tokenizer; }

    /// <summary>The task names <see cref="Create"/> knows (RULER's synthetic.yaml names and short aliases).</summary>
    public static IReadOnlyList<string> TaskNames { get; } =
    [
        "niah_single", "niah_single_1", "niah_single_2", "niah_single_3",
        "niah_multikey", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
        "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe",
    ];

    /// <summary>
    /// The task <paramref name="name"/> configured as RULER's synthetic.yaml does (niah_single = niah_single_2,
    /// niah_multikey = niah_multikey_1); <paramref name="essays"/> is needed by essay haystacks and word keys.
    /// </summary>
    public static IRulerTask Create(string name, Haystack? essays, int length) => name switch
    {
        "niah_single_1" => new NiahTask(name, HaystackKind.Noise, NeedleKind.Words, NeedleKind.Numbers, 1, 1, 1, essays),
        "niah_single" or "niah_single_2" => new NiahTask(name, HaystackKind.Essay, NeedleKind.Words, NeedleKind.Numbers, 1, 1, 1, essays),
        "niah_single_3" => new NiahTask(name, HaystackKind.Essay, NeedleKind.Words, NeedleKind.Uuids, 1, 1, 1, essays),
        "niah_multikey" or "niah_multikey_1" => new NiahTask(name, HaystackKind.Essay, NeedleKind.Words, NeedleKind.Numbers, 4, 1, 1, essays),
        "niah_multikey_2" => new NiahTask(name, HaystackKind.Needle, NeedleKind.Words, NeedleKind.Numbers, 1, 1, 1, essays),
        "niah_multikey_3" => new NiahTask(name, HaystackKind.Needle, NeedleKind.Uuids, NeedleKind.Uuids, 1, 1, 1, essays),
        "niah_multivalue" => new NiahTask(name, HaystackKind.Essay, NeedleKind.Words, NeedleKind.Numbers, 1, 4, 1, essays),
        "niah_multiquery" => new NiahTask(name, HaystackKind.Essay, NeedleKind.Words, NeedleKind.Numbers, 1, 1, 4, essays),
        "vt" => new VariableTrackingTask(),
        "cwe" => CommonWordsTask.ForLength(essays ?? throw new KvSharpException("cwe needs the essays folder for its vocabulary"), length),
        "fwe" => new FrequentWordsTask(),
        _ => throw new KvSharpException($"RULER task '{name}': unknown (known: {string.Join(", ", TaskNames)})"),
    };

    /// <summary>Tokens of <paramref name="input"/> (BOS included) plus the answer budget: RULER's record length.</summary>
    public int Length(IRulerTask task, string input) => _tokenizer.Encode(input, addSpecial: true).Length + task.TokensToGenerate;

    /// <summary><paramref name="count"/> records of <paramref name="task"/> at most <paramref name="length"/> tokens long.</summary>
    public IReadOnlyList<RulerRecord> Generate(IRulerTask task, int length, int count, int seed)
    {
        int size = FitSize(task, length, seed);
        var records = new List<RulerRecord>();
        for (int i = 0; i < count; i++)
        {
            int used = SizeFor(task, length, size, seed, i);
            var (input, outputs) = task.Generate(used, SampleRandom(seed, i));
            records.Add(new RulerRecord(i, input, outputs, Length(task, input)));
        }
        return records;
    }

    /// <summary>
    /// The haystack size of sample <paramref name="index"/>: <paramref name="fittedSize"/> (from <see cref="FitSize"/>),
    /// shrunk in steps of at most 5% until that sample's own draw fits <paramref name="length"/> tokens.
    /// </summary>
    public int SizeFor(IRulerTask task, int length, int fittedSize, int seed, int index)
    {
        for (int used = fittedSize; ; used -= Math.Max(1, Math.Min(task.Increment, used / 20)))
        {
            int n = Length(task, task.Generate(used, SampleRandom(seed, index)).Input);
            if (n <= length) return used;
            if (used <= 1) throw new KvSharpException($"{task.Name}: even the smallest haystack needs {n} tokens, more than {length}");
        }
    }

    /// <summary>
    /// The random draws of sample <paramref name="index"/>: one independent stream per sample, so any subset or rerun
    /// of samples draws the same texts.
    /// </summary>
    public static RulerRandom SampleRandom(int seed, int index) => new(unchecked((seed * 1_000_003) + (index * 7919) + 17));

    /// <summary>The largest haystack size whose prompt fits <paramref name="length"/> tokens (for the draw of seed <paramref name="seed"/>).</summary>
    public int FitSize(IRulerTask task, int length, int seed)
    {
        int Tokens(int size) => Length(task, task.Generate(size, SampleRandom(seed, -1)).Input);
        int probe = task.Increment;
        double perUnit = Math.Max(1e-3, (Tokens(probe) - Tokens(1)) / (double)Math.Max(1, probe - 1));
        int low = 1, high = Math.Max(probe * 2, (int)(length / perUnit * 3));
        int best = 0;
        while (low <= high)
        {
            int mid = low + (high - low) / 2;
            if (Tokens(mid) <= length) { best = mid; low = mid + 1; }
            else high = mid - 1;
        }
        if (best == 0) throw new KvSharpException($"{task.Name}: {length} tokens do not fit even the smallest haystack");
        return best;
    }

}
