namespace KvSharp.Cache.Blocks;

/// <summary>
/// Byte offsets of the areas of a VidKV block (<see cref="KvFormat.VidKvKey"/> or <see cref="KvFormat.VidKvValue"/>),
/// in order; every area starts right after the previous one and bit-packed areas are LSB first.
/// </summary>
/// <remarks>
/// <see cref="KvFormat.VidKvKey"/> (T tokens, d channels, m outlier channels):
/// <list type="number">
/// <item>channel mask, d bits: bit c set when channel c is an outlier channel;</item>
/// <item>outlier codes, T·m 2-bit codes: token t, k-th outlier channel (ascending channel order) at element t·m + k;</item>
/// <item>normal codes, T·(d − m) bits: DFT coefficient j of the k-th normal channel at element j·(d − m) + k
/// (bit 1 = positive sign; coefficient 0, the mean, has no code and its bits are 0);</item>
/// <item>f16 parameters: m outlier scales, m outlier mins, d − m normal scales, d − m normal means.</item>
/// </list>
/// <see cref="KvFormat.VidKvValue"/> (T tokens, d channels, S salient tokens):
/// <list type="number">
/// <item>token mask, ⌈T/8⌉ bytes: bit t set when token t is salient;</item>
/// <item>trits, ⌈T·d/5⌉ bytes: element e = t·d + c is base-3 digit e % 5 (trit + 1) of byte e / 5 (salient rows hold 0
/// trits, digit 1);</item>
/// <item>salient rows, S × d/2 bytes of Int4 codes (channel c in the low nibble of byte c/2 when c is even), slot i for
/// the i-th salient token in token order;</item>
/// <item>f16 parameters: d channel scales, then S salient-row scales and S salient-row mins.</item>
/// </list>
/// </remarks>
internal readonly struct VidKvLayout
{
    private readonly int _tokens, _headDim, _parameter;
    private readonly bool _key;

    public VidKvLayout(KvFormat format, int tokens, int headDim, int parameter)
    {
        _key = format == KvFormat.VidKvKey; _tokens = tokens; _headDim = headDim; _parameter = parameter;
    }

    /// <summary>Outlier channels (keys) or salient tokens (values).</summary>
    public int Parameter => _parameter;

    /// <summary>Bytes of the channel (keys) or token (values) mask at offset 0.</summary>
    public int MaskBytes => _key ? _headDim / 8 : (_tokens + 7) / 8;

    /// <summary>Keys: the outlier codes; values: the trits.</summary>
    public int FirstCodeOffset => MaskBytes;

    /// <summary>Keys: the normal channels' sign bits; values: the salient rows' Int4 codes.</summary>
    public int SecondCodeOffset => FirstCodeOffset + (_key ? (2 * _tokens * _parameter + 7) / 8 : (_tokens * _headDim + 4) / 5);

    /// <summary>Start of the f16 parameters.</summary>
    public int ParameterOffset => SecondCodeOffset + (_key ? (_tokens * (_headDim - _parameter) + 7) / 8 : _parameter * _headDim / 2);

    /// <summary>Exact bytes of the block.</summary>
    public int ByteSize => ParameterOffset + (_key ? 4 * _headDim : 2 * _headDim + 4 * _parameter);
}
