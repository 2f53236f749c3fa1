namespace KvSharp.Evaluation.Tasks;

/// <summary>How a query's answer is scored.</summary>
public enum ScoreKind
{
    /// <summary>RULER's string_match_all: the fraction of expected strings the answer contains (case-insensitive).</summary>
    StringMatchAll,
    /// <summary>RULER's string_match_part: 1 when the answer contains any expected string (case-insensitive).</summary>
    StringMatchPart,
    /// <summary>Multiple choice: the set of option letters in the answer equals the expected letters.</summary>
    Choice,
    /// <summary>Summaries: ROUGE-L F1 against the reference (ROUGE-1 and ROUGE-2 are recorded beside it).</summary>
    RougeL,
}

/// <summary>One question about a sample's context.</summary>
/// <param name="Question">The text that follows the context (question and answer prefix), answered by generation.</param>
/// <param name="Outputs">The expected strings (RULER's <c>outputs</c>), or the option letters for <see cref="ScoreKind.Choice"/>.</param>
/// <param name="BaselineAnswer">A reference run's full-cache answer to compare with (eval_public.jsonl's <c>full_cache_answer</c>), if known.</param>
public sealed record EvalQuery(string Question, IReadOnlyList<string> Outputs, string? BaselineAnswer = null);

/// <summary>How the queries of a sample share its context.</summary>
public enum ContextSharing
{
    /// <summary>Each query is asked right after the (compressed) context and rolled back afterwards (SCBench multi-request).</summary>
    MultiRequest,
    /// <summary>Queries are turns of one conversation: each question and its answer stay in the cache for the next (SCBench multi-turn).</summary>
    MultiTurn,
}

/// <summary>
/// One evaluation item: a context the KV cache holds (and a press compresses) and the queries asked against it.
/// A RULER record is a sample with one query; an SCBench-style shared context has several.
/// </summary>
/// <param name="Id">Stable identifier within its task (e.g. the record index).</param>
/// <param name="Task">Task name (e.g. <c>niah_single</c>).</param>
/// <param name="Context">The text prefilled before the questions (without BOS, which the tokenizer adds).</param>
/// <param name="Queries">The questions, in order.</param>
/// <param name="Score">How answers are scored.</param>
/// <param name="MaxNewTokens">Generation budget per answer (RULER's tokens_to_generate).</param>
/// <param name="Sharing">How queries share the context.</param>
public sealed record EvalSample(
    string Id, string Task, string Context, IReadOnlyList<EvalQuery> Queries, ScoreKind Score, int MaxNewTokens,
    ContextSharing Sharing = ContextSharing.MultiRequest)
{
    /// <summary>Tokens of context and first question as the source measured them (RULER's <c>length</c>), 0 when unknown.</summary>
    public int Length { get; init; }

    /// <summary>Text that ends every answer (the model's answer format ends with a newline); null to stop only at EOS or the budget.</summary>
    public string? StopString { get; init; } = "\n";

    /// <summary>
    /// For language-model quality samples (no queries): the text that follows <see cref="Context"/>, whose tokens are
    /// scored for perplexity and compared, position by position, with the full cache's next-token distributions.
    /// </summary>
    public string? Continuation { get; init; }
}
