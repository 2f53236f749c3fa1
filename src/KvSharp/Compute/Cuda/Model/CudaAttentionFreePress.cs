using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Scorers;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// The presses whose scores need no attention pass, on a device prefill or on a cache an earlier press of a sequence
/// compressed: StreamingLLM and random score from the positions the heads store (kept on the host; nothing is read
/// back), key-norm from the stored keys' norms (<see cref="CudaPagedKvCache.KeyNorms"/>: computed on the device from the
/// decoded blocks; only the norms are read back). The CPU scorer's own per-head code scores, the CPU's budget chooses on
/// the host, the eviction runs on the device.
/// </summary>
public sealed class CudaAttentionFreePress : ICudaScoredPress
{
    /// <summary>The press of <paramref name="scorer"/> (key-norm, StreamingLLM or random), kept by <paramref name="budget"/>.</summary>
    /// <exception cref="ArgumentException">Another scorer (one that observes attention).</exception>
    public CudaAttentionFreePress(IScorer scorer, IBudget budget)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        ArgumentNullException.ThrowIfNull(budget);
        if (!Scores(scorer)) throw new ArgumentException($"{scorer.Text} observes attention: not an attention-free scorer", nameof(scorer));
        Scorer = scorer;
        Budget = budget;
    }

    /// <summary>Whether this press runs <paramref name="scorer"/> (key-norm, StreamingLLM, random).</summary>
    public static bool Scores(IScorer scorer) => scorer is KeyNormScorer or StreamingLlmScorer or RandomScorer;

    /// <summary>The scorer.</summary>
    public IScorer Scorer { get; }

    /// <inheritdoc />
    public IBudget Budget { get; }

    /// <inheritdoc />
    public bool NeedsFreshPrefill => false;

    /// <inheritdoc />
    public string Text => $"{Scorer.Text}+{Budget.Text}";

    /// <inheritdoc />
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens) => CudaPressSelection.PlainPrefill(Text, model, cache, tokens);

    /// <inheritdoc />
    public HeadScores Score(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template, int protectedPrefix)
    {
        CudaPressSelection.CheckStored(Text, cache, tokens, protectedPrefix);
        int layers = cache.Config.NumLayers, kvHeads = cache.Config.NumKvHeads;
        var scores = new HeadScores(layers, kvHeads);
        var positions = CudaPressSelection.AscendingPositions(cache);
        switch (Scorer)
        {
            case KeyNormScorer:
                var norms = cache.KeyNorms(); // on the device: only the norms come back, not the keys
                for (int i = 0; i < scores.HeadCount; i++) scores[i / kvHeads, i % kvHeads] = KeyNormScorer.FromNorms(norms[i]);
                break;
            case StreamingLlmScorer streaming:
                for (int i = 0; i < scores.HeadCount; i++) scores[i / kvHeads, i % kvHeads] = streaming.Score(positions[i]);
                break;
            case RandomScorer random:
                for (int i = 0; i < scores.HeadCount; i++) scores[i / kvHeads, i % kvHeads] = random.Score(i / kvHeads, i % kvHeads, positions[i].Length);
                break;
        }
        return scores;
    }
}
