using KvSharp.Compression;
using KvSharp.Compression.Quantization;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// VidKV on the device: what <see cref="VidKvPress"/> does to a CPU cache, over a fresh prefill in a
/// <see cref="CudaPagedKvCache"/>. Each head's oldest whole blocks (all but the newest <see cref="VidKvPress.Residual"/>
/// tokens, in blocks) are encoded on the device as VidKV key and value blocks (<see cref="CudaPagedKvCache.EncodeVidKv"/>:
/// outlier channels, DFT signs, salient tokens, the CPU codec's arithmetic), and the cache attends through the VidKV
/// kernel from then on. Nothing is evicted. Its blocks must be a fresh prefill's (full, in order), and the device neither
/// evicts nor re-quantizes VidKV blocks, so in a sequence it can only be the only press.
/// </summary>
public sealed class CudaVidKvPress : ICudaContextPress
{
    /// <summary>The device twin of <paramref name="press"/>.</summary>
    public CudaVidKvPress(VidKvPress press)
    {
        ArgumentNullException.ThrowIfNull(press);
        Press = press;
    }

    /// <summary>The CPU press (its outlier share, salient count and residual).</summary>
    public VidKvPress Press { get; }

    /// <inheritdoc />
    public string Text => Press.Text;

    /// <summary>VidKV encodes a fresh prefill's whole blocks: a sequence's first press.</summary>
    public bool NeedsFreshPrefill => true;

    /// <inheritdoc />
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens) => CudaPressSelection.PlainPrefill(Text, model, cache, tokens);

    /// <summary>
    /// Encodes each head's oldest whole blocks as VidKV blocks on the device; every token stays stored (the keep flags are
    /// all set) and there are no scores.
    /// </summary>
    /// <exception cref="KvSharpException">The cache is not a fresh prefill of <paramref name="tokens"/>, its blocks are smaller than their
    /// VidKV encoding, or the press's layouts do not fit its geometry.</exception>
    public bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores)
    {
        ArgumentNullException.ThrowIfNull(cache);
        CudaPressSelection.CheckFresh(Text, cache, tokens, protectedPrefix);
        var (keys, values) = Press.Layouts(cache.BlockTokens, cache.Config.HeadDim);
        var lengths = cache.HeadLengths();
        cache.EncodeVidKv(keys, values, Press.Residual);
        scores = CudaPressSelection.ToHeadScores(cache, [.. Enumerable.Range(0, cache.HeadCount).Select(_ => Array.Empty<float>())]);
        return [.. lengths.Select(n => Enumerable.Repeat(true, n).ToArray())];
    }
}
