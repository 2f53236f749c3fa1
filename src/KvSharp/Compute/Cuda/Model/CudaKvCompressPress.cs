using KvSharp.Cache;
using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Scorers;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// KV-Compress on the device. The CPU scorer runs each of the last <see cref="KvCompressScorer.Window"/> context tokens
/// again, alone, at its position over the cache cut back before it, and adds the square of the group's summed probability
/// each earlier token gets. Those single-query runs are the prefill's own steps, so the device prefills the context up to
/// the window, then the window one token at a time with the statistics on for that token alone
/// (<see cref="CudaPagedKvCache.BeginStatistics"/> / <see cref="CudaPagedKvCache.EndStatistics"/>), the squares summed on
/// the host by the CPU scorer's code; the block scores and the budget follow on the host, the eviction on the device.
/// </summary>
public sealed class CudaKvCompressPress : ICudaScoredPress
{
    private (CudaPagedKvCache Cache, float[][] Metrics)? _observed; // the last Prefill's per-token metrics, until Score takes them

    /// <summary>KV-Compress with <paramref name="scorer"/>'s window and block, kept by <paramref name="budget"/>.</summary>
    public CudaKvCompressPress(KvCompressScorer scorer, IBudget budget)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        ArgumentNullException.ThrowIfNull(budget);
        Scorer = scorer;
        Budget = budget;
    }

    /// <summary>The scorer whose window and block the press uses.</summary>
    public KvCompressScorer Scorer { get; }

    /// <inheritdoc />
    public IBudget Budget { get; }

    /// <inheritdoc />
    public string Text => $"{Scorer.Text}+{Budget.Text}";

    /// <inheritdoc />
    public bool NeedsFreshPrefill => true;

    /// <inheritdoc />
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        CudaPressSelection.CheckEmpty(Text, cache, tokens);
        var all = tokens.ToArray();
        int start = Math.Max(0, all.Length - Scorer.Window), group = cache.Config.NumHeads / cache.Config.NumKvHeads;
        var metrics = new float[cache.HeadCount][];
        for (int h = 0; h < metrics.Length; h++) metrics[h] = new float[all.Length];
        _observed = null;
        if (start == 0)
        {
            model.Forward(all, cache); // the whole context is the window: every token is kept
            _observed = (cache, metrics);
            return;
        }
        model.Forward(all.AsSpan(0, start), cache);
        for (int q = start; q < all.Length; q++)
        {
            cache.BeginStatistics(new AttentionStatisticsRequest(q, GroupFold.Mean));
            try
            {
                model.Forward(all.AsSpan(q, 1), cache);
            }
            catch
            {
                cache.StopStatistics();
                throw;
            }
            var (_, sum) = cache.EndStatistics();
            for (int h = 0; h < metrics.Length; h++) KvCompressScorer.AddQuery(metrics[h], sum[h], group);
        }
        _observed = (cache, metrics);
    }

    /// <inheritdoc />
    public HeadScores Score(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template, int protectedPrefix)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(tokens);
        if (_observed is not { } observed || !ReferenceEquals(observed.Cache, cache) || observed.Metrics[0].Length != tokens.Count)
            throw new KvSharpException($"{Text}: the window's queries were not observed; prefill the context with this press's Prefill");
        CudaPressSelection.CheckFresh(Text, cache, tokens, protectedPrefix);
        _observed = null;
        int start = Math.Max(0, tokens.Count - Scorer.Window);
        var positions = Enumerable.Range(0, tokens.Count).ToArray(); // a fresh prefill: storage index = position
        foreach (var m in observed.Metrics) Scorer.ScoreBlocks(m, positions, start);
        return CudaPressSelection.ToHeadScores(cache, observed.Metrics);
    }
}
