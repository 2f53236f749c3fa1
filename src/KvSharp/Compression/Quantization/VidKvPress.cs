using System.Globalization;
using KvSharp.Cache.Blocks;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// VidKV's 1.x-bit KV (Tao et al. 2025) applied to a prefilled cache: every block of keys is stored as
/// <see cref="KvFormat.VidKvKey"/> (the <see cref="Outliers"/> share of channels with the widest range at 2 bits, the
/// others at 1 bit in the frequency domain: signs of their real-DFT coefficients along the block's tokens) and every
/// block of values as <see cref="KvFormat.VidKvValue"/> (ternary per channel, the <see cref="Salient"/> tokens of each
/// block that ternary would hurt most at Int4). The newest <see cref="Residual"/> tokens of each head stay as they are.
/// Text form <c>vidkv:outliers=0.5,salient=2,residual=0</c>; docs/quantization.md has the formulas.
/// </summary>
/// <remarks>
/// <para>Which tokens: of each head's n stored tokens the oldest ⌊(n − R)/B⌋·B (B = the cache's block tokens) are
/// re-encoded, whole blocks only, as <see cref="KiviPress"/> does: a VidKV block's outlier channels, salient tokens
/// and DFT are computed over its tokens, so blocks are encoded whole and never appended to.</para>
/// <para>Salient tokens: VidKV keeps "semantically salient" tokens at higher precision, chosen outside the cache (its
/// code takes a token list from the vision side). A block format only sees the block's values, so here the salient
/// tokens are the ones whose ternary error is largest (docs/quantization.md, VidKV).</para>
/// </remarks>
public sealed class VidKvPress : IKvPress
{
    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">A share outside [0, 1] or a negative count.</exception>
    public VidKvPress(double outliers = 0.5, int salient = 2, int residual = 0)
    {
        if (!(outliers >= 0 && outliers <= 1)) throw new KvSharpException($"vidkv: outliers must be in [0, 1], got {outliers}");
        if (salient < 0) throw new KvSharpException($"vidkv: salient must be ≥ 0, got {salient}");
        if (residual < 0) throw new KvSharpException($"vidkv: residual must be ≥ 0, got {residual}");
        Outliers = outliers; Salient = salient; Residual = residual;
    }

    /// <summary>Share of key channels per block stored at 2 bits (rounded to whole channels).</summary>
    public double Outliers { get; }

    /// <summary>Value tokens per block stored at Int4 instead of ternary.</summary>
    public int Salient { get; }

    /// <summary>Newest tokens per head left as they are.</summary>
    public int Residual { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"vidkv:outliers={Outliers},salient={Salient},residual={Residual}");

    /// <summary>The key and value block layouts this press writes into a cache of <paramref name="blockTokens"/> × <paramref name="headDim"/> blocks.</summary>
    /// <exception cref="KvSharpException">More salient tokens than a block holds, or blocks VidKV cannot hold.</exception>
    public (BlockLayout Keys, BlockLayout Values) Layouts(int blockTokens, int headDim)
    {
        if (Salient > blockTokens) throw new KvSharpException($"{Text}: salient={Salient} exceeds the cache's {blockTokens} tokens per block");
        try
        {
            return (new BlockLayout(KvFormat.VidKvKey, QuantAxis.PerChannel, (int)Math.Round(Outliers * headDim, MidpointRounding.ToEven), blockTokens, headDim),
                new BlockLayout(KvFormat.VidKvValue, QuantAxis.PerChannel, Salient, blockTokens, headDim));
        }
        catch (KvSharpException e)
        {
            throw new KvSharpException($"{Text}: {e.Message}");
        }
    }

    /// <inheritdoc />
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var cache = context.Cache;
        int b = cache.Options.BlockTokens;
        var (keys, values) = Layouts(b, cache.HeadDim);
        for (int l = 0; l < context.Layers; l++)
        {
            if (cache.SharedLayerSource(l) >= 0) continue; // a shared layer is quantized through its source
            for (int h = 0; h < context.KvHeads; h++)
            {
                int n = cache.Positions(l, h).Count;
                int quantized = Math.Max(0, (n - Residual) / b * b);
                if (quantized == 0) continue;
                var select = new bool[n];
                select.AsSpan(0, quantized).Fill(true);
                cache.RequantizeToLayouts(l, h, select, keys, values);
            }
        }
    }
}
