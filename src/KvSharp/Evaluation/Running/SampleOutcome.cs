namespace KvSharp.Evaluation.Running;

/// <summary>The answer to one query and its score.</summary>
/// <param name="Answer">The generated text (up to the stop string).</param>
/// <param name="Score">Task score in [0, 1].</param>
/// <param name="Expected">The expected outputs.</param>
/// <param name="BaselineAnswer">The reference full-cache answer, when the task has one.</param>
/// <param name="AgreesWithBaseline">Whether <paramref name="Answer"/> matches <paramref name="BaselineAnswer"/> (see <see cref="BaselineComparison"/>); null without a baseline.</param>
/// <param name="Rouge">ROUGE-1/2/L of the answer, for summaries (<see cref="Tasks.ScoreKind.RougeL"/>); null otherwise.</param>
public sealed record QueryOutcome(string Answer, double Score, IReadOnlyList<string> Expected, string? BaselineAnswer, bool? AgreesWithBaseline, Metrics.RougeScores? Rouge = null);

/// <summary>Everything measured on one sample.</summary>
public sealed record SampleOutcome
{
    /// <summary>Task of the sample.</summary>
    public required string Task { get; init; }

    /// <summary>Sample id within the task.</summary>
    public required string Id { get; init; }

    /// <summary>Context tokens (BOS included).</summary>
    public int ContextTokens { get; init; }

    /// <summary>KV bytes after the context's prefill.</summary>
    public long KvBytesBefore { get; init; }

    /// <summary>KV bytes after compression.</summary>
    public long KvBytesAfter { get; init; }

    /// <summary>The largest the cache grew: after prefill, or with a question and its answer (before their rollback).</summary>
    public long PeakKvBytes { get; init; }

    /// <summary>Seconds to prefill the context.</summary>
    public double PrefillSeconds { get; init; }

    /// <summary>Seconds to compress.</summary>
    public double CompressSeconds { get; init; }

    /// <summary>Seconds to run the questions and generate the answers (or to score the continuation).</summary>
    public double DecodeSeconds { get; init; }

    /// <summary>Per-query answers (empty for language-model samples).</summary>
    public IReadOnlyList<QueryOutcome> Queries { get; init; } = [];

    /// <summary>Mean query score, or the top-1 agreement for language-model samples.</summary>
    public double Score { get; init; }

    /// <summary>Language-model quality, for continuation samples.</summary>
    public Metrics.ContinuationQuality? Quality { get; init; }
}

/// <summary>How an answer is compared with a reference run's answer to the same prompt.</summary>
public static class BaselineComparison
{
    /// <summary>
    /// Whether <paramref name="answer"/> (generated up to its first newline) says what <paramref name="baseline"/> says.
    /// The baseline may run past the newline (the reference run had no stop string) or stop early at its token budget,
    /// so: equal first lines, or, when the baseline has no newline, one is a prefix of the other.
    /// </summary>
    public static bool Agrees(string answer, string baseline)
    {
        int nl = answer.IndexOf('\n', StringComparison.Ordinal);
        if (nl >= 0) answer = answer[..nl];
        nl = baseline.IndexOf('\n', StringComparison.Ordinal);
        if (nl >= 0) return answer == baseline[..nl];
        if (answer.Length == 0) return baseline.Length == 0; // an empty answer is a prefix of anything, and says nothing
        return answer.StartsWith(baseline, StringComparison.Ordinal) || baseline.StartsWith(answer, StringComparison.Ordinal);
    }
}
