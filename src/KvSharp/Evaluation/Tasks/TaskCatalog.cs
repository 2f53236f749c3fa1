using KvSharp.Evaluation.Tasks.LEval;
using KvSharp.Evaluation.Tasks.Ruler;
using KvSharp.Tokenization;

namespace KvSharp.Evaluation.Tasks;

/// <summary>What a task spec needs to build its samples.</summary>
/// <param name="DataDir">The shared data folder (../shared/data: needle_eval, ruler, leval, paul_graham_essays, misc).</param>
/// <param name="Tokenizer">The model's tokenizer (lengths are measured in its tokens).</param>
/// <param name="MaxContext">The model's context length.</param>
/// <param name="Samples">Samples per task (per sub-task for needle_eval; documents for L-Eval).</param>
/// <param name="Length">Token length of generated tasks.</param>
/// <param name="Seed">Seed of generated tasks.</param>
public sealed record TaskOptions(string DataDir, ITokenizer Tokenizer, int MaxContext, int Samples, int Length, int Seed);

/// <summary>
/// Turns a task spec into samples:
/// <list type="bullet">
/// <item><c>needle_eval[:sub,...]</c> — eval_public.jsonl (niah_single, niah_mixed, kv, vt) with its baseline answers;</item>
/// <item><c>ruler:NAME</c> — a RULER synthetic task generated at the length (niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe and RULER's numbered variants);</item>
/// <item><c>ruler-file:PATH</c> — a RULER jsonl file as it is;</item>
/// <item><c>leval:NAME</c> — an L-Eval task (quality, tpo, coursera, natural_question, ...);</item>
/// <item><c>shared:N</c> / <c>shared-turns:N</c> — one haystack with N facts asked as N requests / N turns (noise haystack; <c>shared-essay:N</c>, <c>shared-turns-essay:N</c> for essays);</item>
/// <item><c>lm:tinystories</c> or <c>lm:PATH</c> — perplexity, KL and top-1 agreement on text continuations.</item>
/// </list>
/// </summary>
public static class TaskCatalog
{
    /// <summary>The samples of <paramref name="spec"/>; an unknown spec or missing file is a <see cref="KvSharpException"/> naming it.</summary>
    public static IReadOnlyList<EvalSample> Load(string spec, TaskOptions options)
    {
        ArgumentNullException.ThrowIfNull(spec);
        int colon = spec.IndexOf(':', StringComparison.Ordinal);
        string kind = (colon < 0 ? spec : spec[..colon]).Trim().ToLowerInvariant();
        string arg = colon < 0 ? "" : spec[(colon + 1)..].Trim();
        string Data(params string[] parts) => Path.Combine([options.DataDir, .. parts]);
        switch (kind)
        {
            case "needle_eval":
                var subs = arg.Length == 0 ? [] : arg.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
                return NeedleEvalSet.Load(Data("needle_eval", "eval_public.jsonl"), subs, options.Samples, options.MaxContext);
            case "ruler":
                return Ruler(Need(arg, spec), options);
            case "ruler-file":
                return RulerRecord.ReadJsonl(Need(arg, spec)).Take(options.Samples)
                    .Select(r => FromRecord(r, Path.GetFileNameWithoutExtension(arg), ScoreKind.StringMatchAll, 128)).ToList();
            case "leval":
                return LEvalTasks.Load(Data("leval"), Need(arg, spec), options.Samples, options.Tokenizer, options.MaxContext);
            case "shared" or "shared-turns" or "shared-essay" or "shared-turns-essay":
                if (!int.TryParse(arg.Length == 0 ? "4" : arg, out int facts) || facts < 1)
                    throw new KvSharpException($"task '{spec}': the number of facts must be a positive integer");
                var essays = kind.EndsWith("essay", StringComparison.Ordinal) ? Haystack.Essays(Data("paul_graham_essays")) : null;
                var task = new SharedContextTask(facts, kind.StartsWith("shared-turns", StringComparison.Ordinal) ? ContextSharing.MultiTurn : ContextSharing.MultiRequest, essays);
                var generator = new RulerGenerator(options.Tokenizer);
                int size = generator.FitSize(task, options.Length, options.Seed);
                return Enumerable.Range(0, options.Samples)
                    .Select(i => task.Build(generator.SizeFor(task, options.Length, size, options.Seed, i), RulerGenerator.SampleRandom(options.Seed, i), i.ToString(System.Globalization.CultureInfo.InvariantCulture)))
                    .ToList();
            case "lm":
                string name = Need(arg, spec);
                string path = name == "tinystories" ? Data("misc", "tinystories_valid_excerpt.txt") : name;
                return ContinuationTask.Load(path, name == "tinystories" ? "tinystories" : Path.GetFileNameWithoutExtension(path), options.Samples, options.Tokenizer, Math.Min(options.MaxContext, options.Length));
            default:
                throw new KvSharpException($"task '{spec}': unknown kind '{kind}' (known: needle_eval, ruler, ruler-file, leval, shared, shared-turns, shared-essay, shared-turns-essay, lm)");
        }
    }

    /// <summary>Generated RULER samples of task <paramref name="name"/> at the options' length.</summary>
    public static IReadOnlyList<EvalSample> Ruler(string name, TaskOptions options)
    {
        if (options.Length > options.MaxContext)
            throw new KvSharpException($"ruler:{name}: length {options.Length} exceeds the model's context of {options.MaxContext} tokens");
        string essaysDir = Path.Combine(options.DataDir, "paul_graham_essays");
        var essays = Directory.Exists(essaysDir) ? Haystack.Essays(essaysDir) : null;
        var task = RulerGenerator.Create(name, essays, options.Length);
        var records = new RulerGenerator(options.Tokenizer).Generate(task, options.Length, options.Samples, options.Seed);
        return records.Select(r => FromRecord(r, name, task.Score, task.TokensToGenerate)).ToList();
    }

    /// <summary>The sample of a RULER record: context and question split at the question's opening.</summary>
    public static EvalSample FromRecord(RulerRecord record, string task, ScoreKind score, int maxNewTokens)
    {
        var (context, question) = PromptSplitter.Split(record.Input);
        return new EvalSample(record.Index.ToString(System.Globalization.CultureInfo.InvariantCulture), task, context, [new EvalQuery(question, record.Outputs)], score, maxNewTokens)
        {
            Length = record.Length,
        };
    }

    private static string Need(string arg, string spec) =>
        arg.Length > 0 ? arg : throw new KvSharpException($"task '{spec}': name the task after the colon (e.g. ruler:niah_single)");
}
