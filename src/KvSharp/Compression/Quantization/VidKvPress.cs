using System.Globalization;
using KvSharp.Cache.Blocks;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// VidKV's 1.x-bit KV (Tao et al. 2025), realised with the cache's per-block formats. VidKV stores keys with mixed
/// precision across channels (2-bit for outlier channels, 1-bit after an FFT along tokens for the others) and values
/// ternary per channel with a few salient tokens at higher precision. This cache chooses one format per block for all
/// channels, so the realisation is: keys <see cref="KvFormat.Binary"/> per channel (1 bit + per-channel mean and scale
/// over each block), values <see cref="KvFormat.Ternary"/> (per token, groups of 32 channels: the cache's value axis);
/// the top <see cref="Salient"/> share of tokens by the scorer keeps keys <see cref="KvFormat.Int2"/> and values
/// <see cref="KvFormat.Int4"/>. Not realised: the FFT (quantizing in the frequency domain needs a block format with
/// frequency codes) and per-channel 2-bit outlier channels inside a 1-bit block. Text form
/// <c>vidkv(snapkv):salient=0.1</c>.
/// </summary>
public sealed class VidKvPress : IKvPress
{
    private readonly MiKvPress _tiers;

    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">A share outside [0, 1].</exception>
    public VidKvPress(IScorer scorer, double salient = 0.1)
    {
        ArgumentNullException.ThrowIfNull(scorer);
        if (!(salient >= 0 && salient <= 1)) throw new KvSharpException($"vidkv: salient must be in [0, 1], got {salient}");
        Scorer = scorer; Salient = salient;
        _tiers = new MiKvPress(scorer, new FormatPair(KvFormat.Int2, KvFormat.Int4), new FormatPair(KvFormat.Binary, KvFormat.Ternary), salient);
    }

    /// <summary>Ranks tokens for saliency.</summary>
    public IScorer Scorer { get; }

    /// <summary>Share of tokens kept at higher precision.</summary>
    public double Salient { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"vidkv({Scorer.Text}):salient={Salient}");

    /// <inheritdoc />
    public void Compress(PressContext context) => _tiers.Compress(context);
}
