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
/// TOVA), the window scoring +∞; the scores are read back and the CPU's budget chooses on the host.
/// </summary>
public sealed class CudaWindowPress : ICudaContextPress
{
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

    /// <summary>The budget: how many tokens each head keeps.</summary>
    public IBudget Budget { get; }

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
    public bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(tokens);
        bool observed = cache.IsCollectingStatistics;
        if (!observed && tokens.Count > Window)
            throw new KvSharpException($"{Text}: the window's statistics were not collected; prefill the context with this press's Prefill");
        CudaPressSelection.CheckFreshObserved(Text, cache, tokens, protectedPrefix);
        float[][] perHead = observed ? cache.SnapKvScores(Kernel, Pool)
            : [.. cache.HeadLengths().Select(n => Enumerable.Repeat(float.PositiveInfinity, n).ToArray())];
        scores = CudaPressSelection.ToHeadScores(cache, perHead);
        return CudaPressSelection.KeepAndEvict(cache, Budget, scores, protectedPrefix);
    }
}
