namespace KvSharp.Evaluation.Running;

/// <summary>
/// One finished cell of a sweep (model × task × press × keep ratio): one line of the results file. Times are totals
/// over the cell's samples; KV bytes are means per sample (context only, before and after compression).
/// </summary>
public sealed record CellResult
{
    /// <summary>Identifies the cell's settings; a rerun skips cells whose key is already in the file.</summary>
    public required string Key { get; init; }

    /// <summary>Model name (folder or file name).</summary>
    public required string Model { get; init; }

    /// <summary>Task spec as given (e.g. <c>needle_eval:niah_single</c>, <c>ruler:niah_multikey</c>).</summary>
    public required string Task { get; init; }

    /// <summary>Requested token length for generated tasks; 0 for fixed task files.</summary>
    public int Length { get; init; }

    /// <summary>Seed of generated tasks.</summary>
    public int Seed { get; init; }

    /// <summary>Samples run.</summary>
    public int Samples { get; init; }

    /// <summary>Press name (<c>none</c> for the full cache).</summary>
    public required string Press { get; init; }

    /// <summary>Fraction of the context the press keeps (1 for the full cache).</summary>
    public double KeepRatio { get; init; }

    /// <summary>
    /// Whether <see cref="KeepRatio"/> is the share of KV bytes the press kept on its own (a quantizer or dynamic budget,
    /// which takes no ratio) rather than the ratio asked for.
    /// </summary>
    public bool KeepAchieved { get; init; }

    /// <summary>The compressor's full text form.</summary>
    public required string Compressor { get; init; }

    /// <summary>KV cache block formats.</summary>
    public required string KvCache { get; init; }

    /// <summary>Mean task score in [0, 1] (RULER string match, choice accuracy, or top-1 agreement for continuations).</summary>
    public double Score { get; init; }

    /// <summary>Fraction of queries answered completely (score 1).</summary>
    public double ExactFraction { get; init; }

    /// <summary>Mean score per sub-task (e.g. niah_single, niah_mixed).</summary>
    public IReadOnlyDictionary<string, double> TaskScores { get; init; } = new Dictionary<string, double>();

    /// <summary>Fraction of answers equal to the task's reference full-cache answers, when it has them.</summary>
    public double? BaselineAgreement { get; init; }

    /// <summary>The reference answers' own fraction of complete answers (what <see cref="ExactFraction"/> is compared with).</summary>
    public double? BaselineExactFraction { get; init; }

    /// <summary>Mean ROUGE-1 F1 of the answers (summarization tasks).</summary>
    public double? Rouge1 { get; init; }

    /// <summary>Mean ROUGE-2 F1 of the answers (summarization tasks).</summary>
    public double? Rouge2 { get; init; }

    /// <summary>Mean ROUGE-L F1 of the answers (summarization tasks; also their <see cref="Score"/>).</summary>
    public double? RougeL { get; init; }

    /// <summary>Mean continuation perplexity under this cell's cache (continuation tasks).</summary>
    public double? Perplexity { get; init; }

    /// <summary>Mean continuation perplexity under the full cache.</summary>
    public double? ReferencePerplexity { get; init; }

    /// <summary>Mean KL(full ‖ compressed) of next-token distributions, nats.</summary>
    public double? Kl { get; init; }

    /// <summary>Top-1 next-token agreement with the full cache.</summary>
    public double? Top1Agreement { get; init; }

    /// <summary>Mean context tokens per sample.</summary>
    public double ContextTokens { get; init; }

    /// <summary>Mean KV bytes per sample after the context's prefill.</summary>
    public double KvBytesBefore { get; init; }

    /// <summary>Mean KV bytes per sample after compression.</summary>
    public double KvBytesAfter { get; init; }

    /// <summary>Total prefill seconds.</summary>
    public double PrefillSeconds { get; init; }

    /// <summary>Total compression seconds.</summary>
    public double CompressSeconds { get; init; }

    /// <summary>Total seconds answering (question prefill and decoding).</summary>
    public double DecodeSeconds { get; init; }

    /// <summary>The largest KV cache any sample of the cell held (bytes; after prefill, or grown by questions and answers).</summary>
    public long PeakKvBytes { get; init; }

    /// <summary>The process's peak resident set during the cell (see <see cref="CellMemoryMeter"/>).</summary>
    public long PeakRssBytes { get; init; }

    /// <summary>How far the resident set rose above its value at the cell's start.</summary>
    public long PeakRssDeltaBytes { get; init; }

    /// <summary>Whether <see cref="PeakRssBytes"/> is this cell's own peak (reset at its start) rather than the process's so far.</summary>
    public bool PeakRssPerCell { get; init; }

    /// <summary>When the cell finished (UTC, ISO 8601).</summary>
    public string FinishedUtc { get; init; } = "";

    /// <summary>
    /// Summarizes <paramref name="outcomes"/> into a result (the identity fields come from <paramref name="identity"/>;
    /// the process memory fields are the caller's to set).
    /// </summary>
    public static CellResult Summarize(CellResult identity, IReadOnlyList<SampleOutcome> outcomes, DateTime finishedUtc)
    {
        if (outcomes.Count == 0) throw new KvSharpException($"cell {identity.Key}: no samples ran");
        var queries = outcomes.SelectMany(o => o.Queries).ToList();
        var withBaseline = queries.Where(q => q.BaselineAnswer != null).ToList();
        var quality = outcomes.Where(o => o.Quality != null).Select(o => o.Quality!).ToList();
        var rouge = queries.Where(q => q.Rouge != null).Select(q => q.Rouge!).ToList();
        return identity with
        {
            Samples = outcomes.Count,
            Score = outcomes.Average(o => o.Score),
            ExactFraction = queries.Count > 0 ? queries.Count(q => q.Score >= 1) / (double)queries.Count : 0,
            TaskScores = outcomes.GroupBy(o => o.Task).OrderBy(g => g.Key, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Average(o => o.Score)),
            BaselineAgreement = withBaseline.Count > 0 ? withBaseline.Count(q => q.AgreesWithBaseline == true) / (double)withBaseline.Count : null,
            BaselineExactFraction = withBaseline.Count > 0
                ? withBaseline.Count(q => Metrics.StringMatch.All(q.BaselineAnswer!, q.Expected) >= 1) / (double)withBaseline.Count
                : null,
            Rouge1 = rouge.Count > 0 ? rouge.Average(r => r.Rouge1) : null,
            Rouge2 = rouge.Count > 0 ? rouge.Average(r => r.Rouge2) : null,
            RougeL = rouge.Count > 0 ? rouge.Average(r => r.RougeL) : null,
            Perplexity = quality.Count > 0 ? quality.Average(q => q.Perplexity) : null,
            ReferencePerplexity = quality.Count > 0 ? quality.Average(q => q.ReferencePerplexity) : null,
            Kl = quality.Count > 0 ? quality.Average(q => q.MeanKl) : null,
            Top1Agreement = quality.Count > 0 ? quality.Average(q => q.Top1Agreement) : null,
            ContextTokens = outcomes.Average(o => o.ContextTokens),
            KvBytesBefore = outcomes.Average(o => (double)o.KvBytesBefore),
            KvBytesAfter = outcomes.Average(o => (double)o.KvBytesAfter),
            PrefillSeconds = outcomes.Sum(o => o.PrefillSeconds),
            CompressSeconds = outcomes.Sum(o => o.CompressSeconds),
            DecodeSeconds = outcomes.Sum(o => o.DecodeSeconds),
            PeakKvBytes = outcomes.Max(o => o.PeakKvBytes),
            FinishedUtc = finishedUtc.ToString("o", System.Globalization.CultureInfo.InvariantCulture),
        };
    }
}
