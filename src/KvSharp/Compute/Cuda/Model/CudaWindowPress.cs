using KvSharp.Cache;
using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Scorers;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// The observation-window presses on the device: SnapKV (and DBudgetKV, SnapKV's scores under a dynamic budget) and TOVA
/// (the last query alone, unpooled). The CPU press prefills the context, then runs its last <see cref="Window"/> tokens
/// again at their own positions over the cache cut back before them, and sums the probability their queries give each
/// earlier token (group mean). Those queries are the prefill's own, so the device prefills the context in two parts,
/// the window second with the statistics on (<see cref="CudaPagedKvCache.BeginStatistics"/>, covering the tokens before
/// it): the same observation without a second pass. <see cref="CudaPagedKvCache.SnapKvScores"/> pools on the device (kernel 1 for
/// TOVA), the window scoring +∞; the scores are read back and the CPU's budget chooses on the host. R-KV observes the
/// same window and max-pools it on the device; its raw redundancy is summed on the device too
/// (<see cref="CudaPagedKvCache.KeyRedundancy"/>), and the CPU scorer's own code softmaxes it and mixes the two.
/// </summary>
public sealed class CudaWindowPress : ICudaScoredPress
{
    private readonly RkvScorer? _rkv;

    /// <summary>The press of <paramref name="scorer"/>'s window, kernel and pooling, kept by <paramref name="budget"/>.</summary>
    public CudaWindowPress(SnapKvScorer scorer, IBudget budget)
        : this(scorer?.Text ?? throw new ArgumentNullException(nameof(scorer)), scorer.Window, scorer.Kernel, scorer.Pool, budget)
    {
    }

    /// <summary>TOVA (the last query's group-mean attention, the last token kept), kept by <paramref name="budget"/>.</summary>
    public CudaWindowPress(TovaScorer scorer, IBudget budget)
        : this(scorer?.Text ?? throw new ArgumentNullException(nameof(scorer)), 1, 1, "avg", budget)
    {
    }

    /// <summary>R-KV (the window's max-pooled attention minus the keys' redundancy), kept by <paramref name="budget"/>.</summary>
    public CudaWindowPress(RkvScorer scorer, IBudget budget)
        : this(scorer?.Text ?? throw new ArgumentNullException(nameof(scorer)), scorer.Window, scorer.Kernel, "max", budget) => _rkv = scorer;

    private CudaWindowPress(string scorer, int window, int kernel, string pool, IBudget budget)
    {
        ArgumentNullException.ThrowIfNull(budget);
        Text = $"{scorer}+{budget.Text}";
        Window = window;
        Kernel = kernel;
        Pool = pool;
        Budget = budget;
    }

    /// <inheritdoc />
    public string Text { get; }

    /// <summary>The observed last context tokens (always kept).</summary>
    public int Window { get; }

    /// <summary>The pooling kernel along the tokens (odd; 1 = none).</summary>
    public int Kernel { get; }

    /// <summary>"avg" or "max".</summary>
    public string Pool { get; }

    /// <inheritdoc />
    public IBudget Budget { get; }

    /// <inheritdoc />
    public bool NeedsFreshPrefill => true;

    /// <inheritdoc />
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        CudaPressSelection.CheckEmpty(Text, cache, tokens);
        var all = tokens.ToArray();
        int start = Math.Max(0, all.Length - Window);
        if (start == 0)
        {
            model.Forward(all, cache); // the whole context is the window: every token is kept
            return;
        }
        model.Forward(all.AsSpan(0, start), cache);
        cache.BeginStatistics(new AttentionStatisticsRequest(start, GroupFold.Mean));
        model.Forward(all.AsSpan(start), cache);
    }

    /// <inheritdoc />
    public HeadScores Score(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template, int protectedPrefix)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(tokens);
        bool observed = cache.IsCollectingStatistics;
        if (!observed && tokens.Count > Window)
            throw new KvSharpException($"{Text}: the window's statistics were not collected; prefill the context with this press's Prefill");
        CudaPressSelection.CheckFreshObserved(Text, cache, tokens, protectedPrefix);
        float[][] perHead = observed ? cache.SnapKvScores(Kernel, Pool)
            : [.. cache.HeadLengths().Select(n => Enumerable.Repeat(float.PositiveInfinity, n).ToArray())];
        var scores = CudaPressSelection.ToHeadScores(cache, perHead);
        if (_rkv != null)
        {
            var raw = cache.KeyRedundancy(_rkv.Threshold); // on the device: O(n²) dot products a head, only n values read back
            for (int h = 0; h < scores.HeadCount; h++) _rkv.RescoreWithRaw(scores[h], raw[h]);
        }
        return scores;
    }
}
