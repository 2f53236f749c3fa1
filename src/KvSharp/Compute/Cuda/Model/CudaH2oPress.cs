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
/// CPU's budget chooses on the host. ZipVL's scorer is H2O's sums without a window, each divided on the host by the
/// number of queries that observed the token (the CPU scorer's own code).
/// </summary>
public sealed class CudaH2oPress : ICudaScoredPress
{
    private readonly ZipVlScorer? _zipVl;

    /// <summary>H2O with <paramref name="scorer"/>'s window and chunk, kept by <paramref name="budget"/>.</summary>
    public CudaH2oPress(H2oScorer scorer, IBudget budget)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        ArgumentNullException.ThrowIfNull(budget);
        Scorer = scorer;
        Budget = budget;
        Text = $"{scorer.Text}+{budget.Text}";
    }

    /// <summary>ZipVL's scorer (H2O's sums over <paramref name="scorer"/>'s chunks per observing query), kept by <paramref name="budget"/>.</summary>
    public CudaH2oPress(ZipVlScorer scorer, IBudget budget)
        : this(new H2oScorer(window: 0, (scorer ?? throw new ArgumentNullException(nameof(scorer))).Chunk), budget)
    {
        _zipVl = scorer;
        Text = $"{scorer.Text}+{budget.Text}";
    }

    /// <summary>The H2O scorer whose window and chunk the press observes with.</summary>
    public H2oScorer Scorer { get; }

    /// <inheritdoc />
    public IBudget Budget { get; }

    /// <inheritdoc />
    public string Text { get; }

    /// <inheritdoc />
    public bool NeedsFreshPrefill => true;

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
    public HeadScores Score(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template, int protectedPrefix)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (!cache.IsCollectingStatistics)
            throw new KvSharpException($"{Text}: the chunks' statistics were not collected; prefill the context with this press's Prefill");
        CudaPressSelection.CheckFreshObserved(Text, cache, tokens, protectedPrefix);
        var scores = CudaPressSelection.ToHeadScores(cache, cache.H2oScores(Scorer.Window));
        if (_zipVl != null)
        {
            var positions = Enumerable.Range(0, tokens.Count).ToArray(); // a fresh prefill: storage index = position
            for (int h = 0; h < scores.HeadCount; h++) _zipVl.Normalize(scores[h], positions, tokens.Count, question: 0);
        }
        return scores;
    }
}
