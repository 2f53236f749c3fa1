using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Scorers;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// The presses whose scores need no attention pass, on a device prefill or on a cache an earlier press of a sequence
/// compressed: StreamingLLM and random score from the positions the heads store (kept on the host; nothing is read
/// back), key-norm from the stored keys read back (<see cref="CudaPagedKvCache.Download"/>: the device's blocks decoded on
/// the host as the CPU scorer decodes its own). The CPU scorer's own per-head code scores, the CPU's budget chooses on
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
                using (var stored = cache.Download())
                    for (int l = 0; l < layers; l++)
                        for (int h = 0; h < kvHeads; h++)
                            scores[l, h] = KeyNormScorer.Score(stored.ReadKeys(l, h), cache.Config.HeadDim);
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
