using KvSharp.Compression;
using KvSharp.Compression.Quantization;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A quantization press on the device (KIVI, KVTuner, MiKV, ZipVL, LeanKV): the CPU press's own rule gives every stored
/// token a tier (from the positions, the layer, or the scores of its scorer run on the device by
/// <see cref="Scoring"/>), and each tier's format pair re-quantizes its tokens on the device
/// (<see cref="CudaPagedKvCache.Requantize"/>, every head at once, in tier order as <see cref="PrecisionTiers.Apply"/>
/// does per head), then the pruned tier is evicted there. Tokens appended later are encoded in the cache's own formats,
/// as on the CPU. <see cref="CudaContextPresses.From"/> builds it.
/// </summary>
public sealed class CudaQuantizationPress : ICudaContextPress
{
    private readonly Func<TierInput, (byte[][] Tiers, IReadOnlyList<FormatPair?> Formats)> _tiers;

    /// <summary>What a tier rule sees: the cache, the scores (null without a scorer), each head's stored positions (ascending) and protected-prefix count.</summary>
    internal sealed record TierInput(CudaPagedKvCache Cache, HeadScores? Scores, int[][] Positions, int[] First);

    /// <summary>The press <paramref name="press"/> whose tiers <paramref name="tiers"/> computes, ranked by <paramref name="scoring"/> when it has a scorer.</summary>
    internal CudaQuantizationPress(IKvPress press, ICudaScoredPress? scoring, Func<TierInput, (byte[][] Tiers, IReadOnlyList<FormatPair?> Formats)> tiers)
    {
        ArgumentNullException.ThrowIfNull(press);
        ArgumentNullException.ThrowIfNull(tiers);
        Press = press;
        Scoring = scoring;
        _tiers = tiers;
    }

    /// <summary>The CPU press.</summary>
    public IKvPress Press { get; }

    /// <summary>The device press whose scores rank the tokens (MiKV, ZipVL, LeanKV); null for KIVI and KVTuner.</summary>
    public ICudaScoredPress? Scoring { get; }

    /// <inheritdoc />
    public string Text => Press.Text;

    /// <inheritdoc />
    public bool NeedsFreshPrefill => Scoring?.NeedsFreshPrefill ?? false;

    /// <inheritdoc />
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens)
    {
        if (Scoring != null) Scoring.Prefill(model, cache, tokens);
        else CudaPressSelection.PlainPrefill(Text, model, cache, tokens);
    }

    /// <inheritdoc />
    public bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores)
    {
        HeadScores? ranked = Scoring?.Score(model, cache, tokens, tokenizer, template, protectedPrefix);
        CudaPressSelection.CheckStored(Text, cache, tokens, protectedPrefix);
        var positions = CudaPressSelection.AscendingPositions(cache);
        var (tiers, formats) = _tiers(new TierInput(cache, ranked, positions, CudaPressSelection.Protected(positions, protectedPrefix)));
        scores = ranked ?? CudaPressSelection.ToHeadScores(cache, [.. Enumerable.Range(0, cache.HeadCount).Select(_ => Array.Empty<float>())]);
        return CudaPressSelection.ApplyTiers(cache, tiers, formats);
    }
}
