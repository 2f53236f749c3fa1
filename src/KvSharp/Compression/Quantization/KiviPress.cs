using System.Globalization;
using KvSharp.Cache;
using KvSharp.Cache.Paged;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// KIVI (Liu et al. 2024) applied to a prefilled cache: keys quantized per channel over groups of
/// <see cref="Group"/> consecutive tokens, values per token over groups of <see cref="Group"/> channels, both at
/// <see cref="Bits"/> bits (2 or 4), asymmetric (min + q·scale); the newest <see cref="Residual"/> tokens of each head
/// stay as they are (full precision). Text form <c>kivi:bits=2,group=32,residual=128</c>.
/// </summary>
/// <remarks>
/// <para>Which tokens: of each head's n stored tokens, the oldest ⌊(n − R)/G⌋·G (R = residual, G = group) are quantized,
/// so every key group holds G whole tokens as in KIVI (the ≤ G−1 left-over tokens wait in full precision with the
/// window, as KIVI's key residual does). Groups start at the head's first stored token.</para>
/// <para>Decode-time tokens: the press acts once, on the prefilled context; tokens appended afterwards are encoded
/// in the cache's own formats (<see cref="Cache.Paged.PagedKvCache.Requantize"/>). For KIVI during decoding as well,
/// create the cache with the matching spec <see cref="MatchingCacheSpec"/> (e.g. <c>--kv-cache int2+r128</c>): then
/// new tokens wait in the cache's float residual and are encoded per block, keys per channel and values per token, at
/// the same bits; with an F16 cache new tokens stay F16.</para>
/// <para>Group: the cache fixes key groups at its block size (PagedKvCacheOptions.BlockTokens) and value groups at
/// PagedKvCacheOptions.ValueChannelGroup channels (capped at the head dimension); a group different from those is
/// refused when the press runs.</para>
/// </remarks>
public sealed class KiviPress : IKvPress
{
    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">Bits not 2 or 4, group &lt; 1, or residual &lt; 0.</exception>
    public KiviPress(int bits = 2, int group = 32, int residual = 128)
    {
        if (bits is not (2 or 4)) throw new KvSharpException($"kivi: bits={bits} must be 2 or 4");
        if (group < 1) throw new KvSharpException($"kivi: group must be ≥ 1, got {group}");
        if (residual < 0) throw new KvSharpException($"kivi: residual must be ≥ 0, got {residual}");
        Bits = bits; Group = group; Residual = residual;
    }

    /// <summary>Bits per key and value element (2 or 4).</summary>
    public int Bits { get; }

    /// <summary>Tokens per key group and channels per value group.</summary>
    public int Group { get; }

    /// <summary>Newest tokens per head left unquantized.</summary>
    public int Residual { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"kivi:bits={Bits},group={Group},residual={Residual}");

    /// <summary>The <c>--kv-cache</c> spec under which decode-time tokens are stored as this press stores the context.</summary>
    public KvCacheSpec MatchingCacheSpec => new(FormatPair.IntFormat(Bits), FormatPair.IntFormat(Bits), Residual);

    /// <inheritdoc />
    /// <exception cref="KvSharpException">The cache's block geometry cannot hold groups of <see cref="Group"/>.</exception>
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var cache = context.Cache;
        CheckGeometry(cache.Options, cache.HeadDim);
        var pair = FormatPair.Ints(Bits, Bits);
        for (int l = 0; l < context.Layers; l++)
        {
            if (cache.SharedLayerSource(l) >= 0) continue; // a shared layer is quantized through its source
            for (int h = 0; h < context.KvHeads; h++)
            {
                var tiers = Tiers(cache.Positions(l, h).Count);
                if (tiers.Length > 0 && tiers[0] == 0) PrecisionTiers.Apply(context, l, h, tiers, [pair]);
            }
        }
    }

    /// <summary>Refuses a cache whose blocks cannot hold groups of <see cref="Group"/> (shared with the CUDA backend's press).</summary>
    /// <exception cref="KvSharpException">The block size or the value channel group differs from the group.</exception>
    internal void CheckGeometry(PagedKvCacheOptions options, int headDim)
    {
        int channelGroup = Math.Min(options.ValueChannelGroup, headDim);
        // Value groups cannot exceed the head dimension, so a group wider than a head covers the whole head.
        if (Group != options.BlockTokens || Math.Min(Group, headDim) != channelGroup)
            throw new KvSharpException($"{Text}: this cache quantizes keys in groups of its block size ({options.BlockTokens} tokens) and values in groups of {channelGroup} channels; group={Group} needs a cache with BlockTokens = ValueChannelGroup = {Group} (the default cache has 32)");
    }

    /// <summary>
    /// The tiers of a head's <paramref name="count"/> stored tokens (ascending position): the oldest ⌊(n − R)/G⌋·G in tier
    /// 0 (<see cref="Bits"/>-bit keys and values), the rest <see cref="PrecisionTiers.Unchanged"/>.
    /// </summary>
    internal byte[] Tiers(int count)
    {
        int quantized = Math.Max(0, (count - Residual) / Group * Group);
        var tiers = new byte[count];
        Array.Fill(tiers, PrecisionTiers.Unchanged, quantized, count - quantized);
        return tiers;
    }
}
