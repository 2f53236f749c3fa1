using KvSharp.Compression;
using KvSharp.Compression.Presses;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// KVCrush on the device: the inner press's device scoring (<see cref="Inner"/>: SnapKV, H2O, KVzip, ...) and its budget's
/// keep flags, then the CPU press's own code adds each head's representatives of the tokens the inner press would evict
/// (binary head signatures by median, Hamming order to the anchor) on the host, and the rest is evicted on the device.
/// </summary>
public sealed class CudaKvCrushPress : ICudaContextPress
{
    /// <summary>KVCrush <paramref name="press"/> over <paramref name="inner"/>, the device press of its importance press.</summary>
    public CudaKvCrushPress(KvCrushPress press, ICudaScoredPress inner)
    {
        ArgumentNullException.ThrowIfNull(press);
        ArgumentNullException.ThrowIfNull(inner);
        Press = press;
        Inner = inner;
    }

    /// <summary>The CPU press (its representatives' share and anchor).</summary>
    public KvCrushPress Press { get; }

    /// <summary>The device press of the importance press: its scores and budget.</summary>
    public ICudaScoredPress Inner { get; }

    /// <inheritdoc />
    public string Text => Press.Text;

    /// <inheritdoc />
    public bool NeedsFreshPrefill => Inner.NeedsFreshPrefill;

    /// <inheritdoc />
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens) => Inner.Prefill(model, cache, tokens);

    /// <inheritdoc />
    public bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores)
    {
        scores = Inner.Score(model, cache, tokens, tokenizer, template, protectedPrefix);
        var keep = CudaPressSelection.KeepMasks(cache, Inner.Budget, scores, protectedPrefix, out var ascending);
        Press.AddRepresentatives(keep, scores, ascending, protectedPrefix, Enumerable.Repeat(true, cache.Config.NumLayers).ToArray());
        CudaPressSelection.EvictAllBut(cache, ascending, keep);
        return keep;
    }
}
