namespace KvSharp.Evaluation.Tasks;

/// <summary>
/// The ready retrieval task set of the needle model (../shared/data/needle_eval/eval_public.jsonl): RULER records with
/// a <c>task</c> field (niah_single, niah_mixed, kv, vt) and the model's float32 full-cache answer
/// (<c>full_cache_answer</c>, <c>full_cache_correct</c>), the baseline every press is compared with.
/// </summary>
public static class NeedleEvalSet
{
    /// <summary>The sub-tasks of the file, in the order they are reported.</summary>
    public static IReadOnlyList<string> SubTasks { get; } = ["niah_single", "niah_mixed", "kv", "vt"];

    /// <summary>Generation budget per sub-task: RULER's tokens_to_generate (niah 128, vt 30); uuid values need ~30 tokens.</summary>
    public static int MaxNewTokens(string task) => task switch
    {
        "vt" => 30,
        "kv" => 64,
        _ => 128,
    };

    /// <summary>
    /// Loads the records of <paramref name="subTasks"/> (all when empty) no longer than <paramref name="maxLength"/> tokens,
    /// and keeps at most <paramref name="perTask"/> of each, spread evenly over the file (and so over its lengths).
    /// </summary>
    public static IReadOnlyList<EvalSample> Load(string path, IReadOnlyCollection<string>? subTasks = null, int perTask = int.MaxValue, int maxLength = int.MaxValue)
    {
        var records = RulerRecord.ReadJsonl(path);
        var wanted = subTasks is { Count: > 0 } ? subTasks : SubTasks;
        var known = records.Select(r => r.ExtraString("task") ?? "").ToHashSet();
        foreach (var t in wanted)
            if (!known.Contains(t)) throw new KvSharpException($"{path}: no records of task '{t}' (the file has {string.Join(", ", known.Order())})");
        var samples = new List<EvalSample>();
        foreach (var task in wanted)
        {
            var ofTask = records.Where(r => r.ExtraString("task") == task && r.Length <= maxLength).ToList();
            foreach (var r in Spread(ofTask, perTask)) samples.Add(ToSample(r, task));
        }
        return samples;
    }

    /// <summary>The sample of one record: context and question split, the baseline answer attached.</summary>
    public static EvalSample ToSample(RulerRecord record, string task)
    {
        var (context, question) = PromptSplitter.Split(record.Input);
        var query = new EvalQuery(question, record.Outputs, record.ExtraString("full_cache_answer"));
        return new EvalSample(record.Index.ToString(System.Globalization.CultureInfo.InvariantCulture), task, context, [query], ScoreKind.StringMatchAll, MaxNewTokens(task))
        {
            Length = record.Length,
        };
    }

    /// <summary>At most <paramref name="count"/> items evenly spaced over <paramref name="items"/>, in order.</summary>
    internal static IEnumerable<T> Spread<T>(IReadOnlyList<T> items, int count)
    {
        if (count >= items.Count) return items;
        if (count <= 0) return [];
        return Enumerable.Range(0, count).Select(i => items[(int)((long)i * items.Count / count)]);
    }
}
