using KvSharp.Cache;
using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Scorers;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// KVzip on the device: what <c>ScoredPress(KvzipScorer, budget)</c> does to a CPU cache, over a freshly prefilled
/// <see cref="CudaPagedKvCache"/>. Each chunk's repeat run (the request, the turn suffix, the chunk's own tokens:
/// <see cref="KvzipScorer"/>'s prompts) is run after the context through <see cref="CudaTransformer"/> with the attention
/// statistics on (<see cref="GroupFold.Max"/> over the whole context, every run query counted); the chunk's tokens take
/// their maxima on the device and the run is dropped by restoring a checkpoint (<see cref="CudaPagedKvCache.Restore"/>),
/// so the next run sees the context alone. The scores are read back once; the budget (the CPU's <see cref="IBudget"/>
/// code) and each head's top-k (<see cref="TopK.KeepMask"/>) choose on the host, and the eviction runs on the device.
/// KVzip+ (<see cref="KvzipScorer.Plus"/>) weighs each probability by ‖W_o^h v_t‖ / ‖x_q‖ as <c>KvzipPlusRun</c> does: the
/// value norms come from the device cache and the device's output projection once per scoring
/// (<see cref="CudaPagedKvCache.KvzipPlusValueNorms"/>), the row norms from each run's layer inputs.
/// </summary>
public sealed class CudaKvzipPress : ICudaScoredPress
{
    /// <summary>KVzip (or KVzip+) scored with <paramref name="scorer"/>'s chunk, kept by <paramref name="budget"/>.</summary>
    public CudaKvzipPress(KvzipScorer scorer, IBudget budget)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        ArgumentNullException.ThrowIfNull(budget);
        Scorer = scorer;
        Budget = budget;
    }

    /// <summary>The scorer whose chunk and prompts the runs use.</summary>
    public KvzipScorer Scorer { get; }

    /// <summary>The budget: how many tokens each head keeps.</summary>
    public IBudget Budget { get; }

    /// <inheritdoc />
    public string Text => $"{Scorer.Text}+{Budget.Text}";

    /// <summary>KVzip's repeat runs cover the whole context after its prefill: a fresh one.</summary>
    public bool NeedsFreshPrefill => true;

    /// <summary>A plain prefill: KVzip observes its repeat runs after the context, in <see cref="Compress(CudaTransformer, CudaPagedKvCache, IReadOnlyList{int}, ITokenizer, IChatTemplate?, int, out HeadScores)"/>.</summary>
    /// <exception cref="KvSharpException">The cache is not empty, holds several sequences, or has no room for the tokens.</exception>
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens) => CudaPressSelection.PlainPrefill(Text, model, cache, tokens);

    /// <summary>
    /// KVzip's score of every stored token of <paramref name="cache"/> (a fresh prefill of <paramref name="tokens"/> at
    /// batch 1: storage index = position), per head [layer, KV head]: the maximum over its chunk's repeat run queries and
    /// the group's query heads of the probability it gets (KVzip+: times ‖W_o^h v_t‖ / ‖x_q‖); tokens before
    /// <paramref name="protectedPrefix"/> score 0. The cache is left as it was.
    /// </summary>
    /// <exception cref="KvSharpException">The cache is not a fresh prefill of the tokens, or has no room after them for a run.</exception>
    public HeadScores Score(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(tokenizer);
        int length = tokens.Count;
        CudaPressSelection.CheckFresh(Scorer.Plus ? "kvzip+" : "kvzip", cache, tokens, protectedPrefix);
        var suffix = tokenizer.Encode(KvzipScorer.TurnSuffix(template), addSpecial: false);
        var first = tokenizer.Encode(KvzipScorer.FirstPrompt, addSpecial: false);
        var next = tokenizer.Encode(KvzipScorer.NextPrompt, addSpecial: false);
        // As the CPU scorer: the run sits after the context, the chunk shrinking when the context nearly fills the cache.
        int room = cache.Capacity - length - Math.Max(first.Length, next.Length + KvzipScorer.OverlapTokens) - suffix.Length;
        int chunk = Math.Min(Scorer.Chunk, room);
        if (chunk < 1 && length > protectedPrefix)
            throw new KvSharpException($"kvzip: the GPU cache holds {cache.Capacity} positions and the context {length}: no room after it for the repeat run (allow at least {length - room + 1} positions)");
        int maxTokens = cache.MaxBlocks * cache.BlockTokens;
        using var scores = cache.Device.Allocate((long)cache.HeadCount * maxTokens * sizeof(float));
        scores.Fill32(0);
        // KVzip+'s value weights depend on the stored values only: once for every run.
        using var valueNorms = Scorer.Plus ? cache.KvzipPlusValueNorms(model, length) : null;
        using (var context = cache.Save())
            for (int start = protectedPrefix; start < length; start += chunk)
            {
                int end = Math.Min(length, start + chunk);
                int from = Math.Max(protectedPrefix, start - KvzipScorer.OverlapTokens);
                int[] request = start == protectedPrefix ? first : [.. next, .. tokens.Skip(from).Take(start - from)];
                int[] run = [.. request, .. suffix, .. tokens.Skip(start).Take(end - start)];
                var statistics = new AttentionStatisticsRequest(length, GroupFold.Max);
                if (valueNorms != null) cache.BeginWeightedStatistics(statistics, valueNorms, length);
                else cache.BeginStatistics(statistics);
                try
                {
                    model.Forward(run, cache);
                    cache.EndStatisticsInto(scores, start, end);
                }
                finally
                {
                    cache.StopStatistics();
                    cache.Restore(context);
                }
            }
        var result = new HeadScores(cache.Config.NumLayers, cache.Config.NumKvHeads);
        for (int h = 0; h < cache.HeadCount; h++)
        {
            var s = new float[length];
            scores.Download<float>(s, (long)h * maxTokens * sizeof(float));
            result[h / cache.Config.NumKvHeads, h % cache.Config.NumKvHeads] = s;
        }
        return result;
    }

    /// <summary>
    /// Scores (<see cref="Score"/>), chooses as <see cref="ScoredPress.Select(PressContext)"/> does (the protected prefix
    /// kept outside the budget, the budget's count of best candidates per head, ties to the later token) and evicts the
    /// rest on the device. Returns the keep flags per head [layer · KvHeads + KV head] over its positions.
    /// </summary>
    /// <exception cref="KvSharpException">As <see cref="Score"/>.</exception>
    public bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix = 0) => Compress(model, cache, tokens, tokenizer, template, protectedPrefix, out _);

    /// <summary>As <see cref="Compress(CudaTransformer, CudaPagedKvCache, IReadOnlyList{int}, ITokenizer, IChatTemplate?, int)"/>, also returning the scores it chose by.</summary>
    /// <exception cref="KvSharpException">As <see cref="Score"/>.</exception>
    public bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores)
    {
        scores = Score(model, cache, tokens, tokenizer, template, protectedPrefix);
        return CudaPressSelection.KeepAndEvict(cache, Budget, scores, protectedPrefix);
    }
}
