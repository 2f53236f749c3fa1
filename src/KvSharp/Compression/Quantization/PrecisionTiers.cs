using KvSharp.Cache.Blocks;

namespace KvSharp.Compression.Quantization;

/// <summary>A (key format, value format) pair a token is stored in; keys per channel, values per token (the cache's layouts).</summary>
/// <param name="Keys">Key block format.</param>
/// <param name="Values">Value block format.</param>
public readonly record struct FormatPair(KvFormat Keys, KvFormat Values)
{
    /// <summary>The integer format of <paramref name="bits"/> bits (8, 4 or 2).</summary>
    /// <exception cref="KvSharpException">Any other bit width.</exception>
    public static KvFormat IntFormat(int bits) => bits switch
    {
        8 => KvFormat.Int8,
        4 => KvFormat.Int4,
        2 => KvFormat.Int2,
        _ => throw new KvSharpException($"no integer KV format of {bits} bits (expected 8, 4 or 2)"),
    };

    /// <summary>The pair with <paramref name="keyBits"/>-bit keys and <paramref name="valueBits"/>-bit values.</summary>
    public static FormatPair Ints(int keyBits, int valueBits) => new(IntFormat(keyBits), IntFormat(valueBits));

    /// <summary>Parses <c>FORMAT</c> (keys and values alike) or <c>KEYS:VALUES</c>, e.g. <c>int8</c>, <c>int4:int2</c>.</summary>
    /// <exception cref="KvSharpException">An unknown format name.</exception>
    public static FormatPair Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Split(':');
        if (parts.Length > 2) throw new KvSharpException($"'{text}' is not FORMAT or KEYS:VALUES");
        var keys = KvFormatInfo.Parse(parts[0]);
        return new FormatPair(keys, parts.Length == 2 ? KvFormatInfo.Parse(parts[1]) : keys);
    }

    /// <summary>The text form <see cref="Parse"/> reads: <c>int8</c> or <c>int8:int4</c> (lower case).</summary>
    public override string ToString() => Keys == Values ? Name(Keys) : $"{Name(Keys)}:{Name(Values)}";

    private static string Name(KvFormat f) => f == KvFormat.Fp8E4M3 ? "fp8" : f.ToString().ToLowerInvariant();
}

/// <summary>
/// Applies a per-token precision decision to one (layer, KV head): each stored token gets a tier, each tier a
/// <see cref="FormatPair"/> or null (evicted). The mixed-precision presses (MiKV, ZipVL, LeanKV, VidKV, KIVI) all end here.
/// </summary>
public static class PrecisionTiers
{
    /// <summary>Tier value for a token left as it is stored.</summary>
    public const byte Unchanged = byte.MaxValue;

    /// <summary>
    /// Re-encodes the tokens of (layer, KV head) whose tier t has <c>formats[t]</c> non-null in that pair, then evicts the
    /// tokens whose tier maps to null; <see cref="Unchanged"/> tokens keep their storage. Re-quantization comes first so
    /// eviction rebuilds blocks that already hold their final formats.
    /// </summary>
    /// <param name="context">The press's context.</param>
    /// <param name="layer">Layer.</param>
    /// <param name="kvHead">KV head.</param>
    /// <param name="tiers">One tier per stored token, in Positions order.</param>
    /// <param name="formats">The format pair of each tier, or null (evict).</param>
    /// <param name="balancedKeys">Quantized key formats are stored per token under the head's key balance (MiKV; see PagedKvCache.SetKeyBalance).</param>
    /// <exception cref="ArgumentException">The tier array does not have one entry per stored token, or a tier has no format entry.</exception>
    public static void Apply(PressContext context, int layer, int kvHead, ReadOnlySpan<byte> tiers, IReadOnlyList<FormatPair?> formats, bool balancedKeys = false)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(formats);
        int n = context.Cache.Positions(layer, kvHead).Count;
        if (tiers.Length != n) throw new ArgumentException($"{tiers.Length} tiers for the {n} tokens of layer {layer}, KV head {kvHead}", nameof(tiers));
        foreach (byte t in tiers)
            if (t != Unchanged && t >= formats.Count) throw new ArgumentException($"tier {t} has no format (tiers 0..{formats.Count - 1})", nameof(tiers));
        var select = new bool[n];
        for (int f = 0; f < formats.Count; f++)
        {
            if (formats[f] is not { } pair) continue;
            bool any = false;
            for (int i = 0; i < n; i++) any |= select[i] = tiers[i] == f;
            if (any) context.Cache.Requantize(layer, kvHead, select, pair.Keys, pair.Values, balancedKeys && pair.Keys.IsQuantized());
        }
        bool evict = false;
        for (int i = 0; i < n; i++) evict |= select[i] = tiers[i] != Unchanged && formats[tiers[i]] is null;
        if (evict) context.Cache.Evict(layer, kvHead, select);
    }
}
