using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Scorers;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// H2O on the device. The CPU press re-runs the prefill in chunks of <see cref="H2oScorer.Chunk"/> tokens, each chunk's
/// queries observed over the tokens before it, and sums the group-mean probability every token receives. A chunk's
/// queries over the cache cut back to its start are the prefill's own, so the device prefills in those chunks with the
/// heavy-hitter observation on (<see cref="CudaPagedKvCache.BeginHeavyHitters"/>): the same sums without a second pass.
/// <see cref="CudaPagedKvCache.H2oScores"/> reads them back (the newest <see cref="H2oScorer.Window"/> tokens +∞) and the
/// CPU's budget chooses on the host.
/// </summary>
public sealed class CudaH2oPress : ICudaContextPress
{
    /// <summary>H2O with <paramref name="scorer"/>'s window and chunk, kept by <paramref name="budget"/>.</summary>
    public CudaH2oPress(H2oScorer scorer, IBudget budget)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        ArgumentNullException.ThrowIfNull(budget);
        Scorer = scorer;
        Budget = budget;
    }

    /// <summary>The scorer whose window and chunk the press uses.</summary>
    public H2oScorer Scorer { get; }

    /// <summary>The budget: how many tokens each head keeps.</summary>
    public IBudget Budget { get; }

    /// <inheritdoc />
    public string Text => $"{Scorer.Text}+{Budget.Text}";

    /// <inheritdoc />
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        CudaPressSelection.CheckEmpty(Text, cache, tokens);
        var all = tokens.ToArray();
        int chunk = Scorer.Chunk;
        model.Forward(all.AsSpan(0, Math.Min(chunk, all.Length)), cache); // the first chunk: nothing before it to observe
        cache.BeginHeavyHitters();
        for (int start = chunk; start < all.Length; start += chunk) model.Forward(all.AsSpan(start, Math.Min(chunk, all.Length - start)), cache);
    }

    /// <inheritdoc />
    public bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (!cache.IsCollectingStatistics)
            throw new KvSharpException($"{Text}: the chunks' statistics were not collected; prefill the context with this press's Prefill");
        CudaPressSelection.CheckFreshObserved(Text, cache, tokens, protectedPrefix);
        scores = CudaPressSelection.ToHeadScores(cache, cache.H2oScores(Scorer.Window));
        return CudaPressSelection.KeepAndEvict(cache, Budget, scores, protectedPrefix);
    }
}
