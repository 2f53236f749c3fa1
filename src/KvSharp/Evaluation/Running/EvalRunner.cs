using System.Diagnostics;
using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Evaluation.Metrics;
using KvSharp.Evaluation.Tasks;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;
using KvSharp.Models;

namespace KvSharp.Evaluation.Running;

/// <summary>
/// Runs samples on one model: prefills the context into a paged KV cache, compresses it, then asks the sample's
/// questions greedily (each rolled back for multi-request, kept for multi-turn) and scores the answers; or, for
/// continuation samples, scores the continuation's tokens against a full-cache run.
/// </summary>
public sealed class EvalRunner
{
    private readonly LanguageModel _model;
    private readonly KvCacheSpec _spec;
    private readonly Generator _generator;

    /// <summary>
    /// A runner over <paramref name="model"/> whose caches use <paramref name="spec"/> (default: F32 blocks, which
    /// store keys and values exactly, so "none" reproduces the float32 engine).
    /// </summary>
    public EvalRunner(LanguageModel model, KvCacheSpec? spec = null)
    {
        _model = model;
        _spec = spec ?? new KvCacheSpec(Cache.Blocks.KvFormat.F32, Cache.Blocks.KvFormat.F32);
        _generator = model.CreateGenerator();
    }

    /// <summary>The cache formats in use.</summary>
    public KvCacheSpec Spec => _spec;

    /// <summary>
    /// Whether a single-query sample's question is handed to the compressor (query-aware compression, as SnapKV
    /// assumes); false compresses every context without knowing the question (KVzip's setting). Default true.
    /// </summary>
    public bool QuestionAware { get; init; } = true;

    /// <summary>
    /// Where prefilled contexts are shared between runs of the same samples (a sweep's cells); null prefills every
    /// run afresh. The results are the same either way: compression works on a copy-on-write fork.
    /// </summary>
    public PrefillStore? Prefills { get; init; }

    /// <summary>Runs one sample with <paramref name="compressor"/>.</summary>
    public SampleOutcome Run(EvalSample sample, ICacheCompressor compressor, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(sample);
        ArgumentNullException.ThrowIfNull(compressor);
        if (sample.Continuation != null) return RunContinuation(sample, compressor);
        if (sample.Queries.Count == 0) throw new KvSharpException($"sample {sample.Task}/{sample.Id} has no questions");

        var (contextIds, firstQuestion) = SplitTokens(sample.Context, sample.Queries[0].Question);
        int ctx = _model.Config.MaxContext;
        if (contextIds.Length >= ctx) throw new KvSharpException($"sample {sample.Task}/{sample.Id}: the context has {contextIds.Length} tokens, the model holds {ctx}");
        using var cache = Prefill(sample, contextIds, ctx, out double prefill, out _);
        long before = cache.ByteCount;

        var sw = Stopwatch.StartNew();
        bool single = sample.Queries.Count == 1;
        var input = new CompressionInput(_model, cache, contextIds, ProtectedPrefix(contextIds), single && QuestionAware ? firstQuestion : null);
        compressor.Compress(input);
        // A recall method (ClusterKV) answers over its own view of the cache.
        using var recall = compressor is IDecodingCompressor decoding ? decoding.ForDecoding(input) : null;
        IKvCache answering = recall ?? cache;
        double compress = sw.Elapsed.TotalSeconds;
        long after = cache.ByteCount;

        sw.Restart();
        int contextLength = cache.Length;
        long peak = Math.Max(before, after);
        var outcomes = new List<QueryOutcome>();
        for (int q = 0; q < sample.Queries.Count; q++)
        {
            cancellation.ThrowIfCancellationRequested();
            var query = sample.Queries[q];
            var prompt = q == 0 ? firstQuestion : _model.Encode(query.Question, addBos: false);
            if (prompt.Length == 0) throw new KvSharpException($"sample {sample.Task}/{sample.Id}: question {q + 1} is empty");
            var options = new GenerationOptions
            {
                MaxTokens = sample.MaxNewTokens,
                Sampler = SamplerOptions.Greedy,
                StopStrings = sample.StopString is { } stop ? [stop] : [],
            };
            var result = _generator.Generate(prompt, answering, ctx, options, cancellation: cancellation);
            peak = Math.Max(peak, cache.ByteCount);
            if (sample.Sharing == ContextSharing.MultiRequest)
            {
                answering.Truncate(contextLength); // the next question sees only the (compressed) context
            }
            else if (result.Reason == StopReason.StopString && result.TokenIds.Count > 0 && answering.Length < ctx)
            {
                // The token that completed the stop string was sampled but never run: run it, so the next turn follows the whole answer.
                _model.Transformer.Forward([result.TokenIds[^1]], answering);
            }
            var rouge = sample.Score == ScoreKind.RougeL ? Rouge.Score(result.Text, query.Outputs) : null;
            double score = rouge?.RougeL ?? StringMatch.Score(sample.Score, result.Text, query.Outputs);
            bool? agrees = query.BaselineAnswer is { } b ? BaselineComparison.Agrees(result.Text, b) : null;
            outcomes.Add(new QueryOutcome(result.Text, score, query.Outputs, query.BaselineAnswer, agrees, rouge));
        }
        return Outcome(sample, contextIds.Length, (before, after, peak), (prefill, compress, sw.Elapsed.TotalSeconds),
            outcomes.Average(o => o.Score)) with
        { Queries = outcomes };
    }

    /// <summary>
    /// Tokens of the context (BOS first) and of the first question, tokenized so that together they are exactly the
    /// tokens of the whole prompt: a boundary the tokenizer would merge across moves into the question.
    /// </summary>
    public (int[] Context, int[] Question) SplitTokens(string context, string question)
    {
        var whole = _model.Encode(context + question);
        var ctx = _model.Encode(context);
        int common = 0;
        while (common < ctx.Length && common < whole.Length && ctx[common] == whole[common]) common++;
        if (common == whole.Length) common--; // the question needs at least one token to generate from
        if (common < 1) throw new KvSharpException("the prompt is empty");
        return (whole[..common], whole[common..]);
    }

    /// <summary>
    /// A cache holding <paramref name="tokens"/>: a fork of the stored prefill when <see cref="Prefills"/> has it, else
    /// a fresh prefill (stored for the next run). With <paramref name="continuation"/>, also the full cache's logits
    /// over it (computed on a fork, so the returned cache holds only the context).
    /// </summary>
    private PagedKvCache Prefill(EvalSample sample, int[] tokens, int ctx, out double seconds, out float[]? referenceLogits, int[]? continuation = null)
    {
        string key = PrefillStore.KeyOf(sample);
        if (Prefills?.TryFork(key) is { } stored)
        {
            seconds = stored.Seconds;
            referenceLogits = stored.ReferenceLogits;
            return stored.Cache;
        }
        var cache = (PagedKvCache)_model.CreateCache(ctx, _spec);
        var sw = Stopwatch.StartNew();
        _model.Transformer.Forward(tokens, cache);
        seconds = sw.Elapsed.TotalSeconds;
        referenceLogits = null;
        if (continuation != null)
        {
            using var reference = cache.Fork();
            referenceLogits = _model.Transformer.Forward(continuation, reference, LogitsMode.All);
        }
        Prefills?.Add(key, cache, seconds, referenceLogits);
        return cache;
    }

    // BOS is the attention sink every press keeps; a model without BOS protects nothing.
    private int ProtectedPrefix(int[] contextIds) =>
        contextIds.Length > 0 && _model.Config.BosTokenId is { } bos && contextIds[0] == bos ? 1 : 0;

    private SampleOutcome RunContinuation(EvalSample sample, ICacheCompressor compressor)
    {
        // The context's last token is run with the continuation, so every scored prediction (including the
        // continuation's first token) is made by attention over the compressed cache.
        var (contextIds, rest) = SplitTokens(sample.Context, sample.Continuation!);
        var head = contextIds[..^1];
        var tail = new int[rest.Length + 1];
        tail[0] = contextIds[^1];
        rest.CopyTo(tail, 1);
        if (head.Length == 0) throw new KvSharpException($"sample {sample.Task}/{sample.Id}: the context needs at least two tokens");
        int ctx = Math.Min(_model.Config.MaxContext, contextIds.Length + rest.Length);
        if (contextIds.Length + rest.Length > _model.Config.MaxContext)
            throw new KvSharpException($"sample {sample.Task}/{sample.Id}: context and continuation have {contextIds.Length + rest.Length} tokens, the model holds {_model.Config.MaxContext}");
        int vocab = _model.Config.VocabSize;
        var inputs = tail[..^1];

        using var cache = Prefill(sample, head, ctx, out double prefill, out var referenceLogits, inputs);
        long before = cache.ByteCount;
        var sw = Stopwatch.StartNew();
        compressor.Compress(new CompressionInput(_model, cache, head, ProtectedPrefix(head), null));
        double compress = sw.Elapsed.TotalSeconds;
        long after = cache.ByteCount;
        sw.Restart();
        var logits = _model.Transformer.Forward(inputs, cache, LogitsMode.All);
        double decode = sw.Elapsed.TotalSeconds;
        long peak = Math.Max(before, cache.ByteCount);

        var quality = LanguageModelMetrics.Compare(referenceLogits, logits, rest, vocab);
        return Outcome(sample, head.Length, (before, after, peak), (prefill, compress, decode), quality.Top1Agreement) with { Quality = quality };
    }

    /// <summary>What both kinds of sample measure: its sizes, bytes, times and score.</summary>
    private static SampleOutcome Outcome(EvalSample sample, int contextTokens, (long Before, long After, long Peak) bytes,
        (double Prefill, double Compress, double Decode) seconds, double score) => new()
        {
            Task = sample.Task,
            Id = sample.Id,
            ContextTokens = contextTokens,
            KvBytesBefore = bytes.Before,
            KvBytesAfter = bytes.After,
            PeakKvBytes = bytes.Peak,
            PrefillSeconds = seconds.Prefill,
            CompressSeconds = seconds.Compress,
            DecodeSeconds = seconds.Decode,
            Score = score,
        };
}
