namespace KvSharp.Cache.Blocks;

/// <summary>
/// The shape and storage format of one KV block: <see cref="Tokens"/> token rows of <see cref="HeadDim"/>
/// channels for one (layer, KV head).
/// </summary>
/// <remarks>
/// Byte layout (little-endian), <see cref="ByteSize"/> bytes in all:
/// <list type="bullet">
/// <item>codes: [Tokens, HeadDim] elements row-major (token t, channel c is element t·HeadDim + c), bit-packed
/// LSB first (element e lives at bit e·bits of the code area: for Int4 byte k holds element 2k in its low
/// nibble, 2k+1 in its high nibble). Float formats store their elements here (F32/F16/BF16/FP8).</item>
/// <item>then, for quantized formats, <see cref="GroupCount"/> f16 scales, followed by GroupCount f16 mins
/// (Int8/4/2) or means (Binary); ternary has scales only. Group g of <see cref="QuantAxis.PerChannel"/> is
/// (token group g / HeadDim, channel g % HeadDim); of <see cref="QuantAxis.PerToken"/> it is
/// (token g / (HeadDim/GroupSize), channel group g % (HeadDim/GroupSize)).</item>
/// <item>VidKV formats (<see cref="KvFormat.VidKvKey"/>, <see cref="KvFormat.VidKvValue"/>) have their own areas,
/// listed in <see cref="VidKvLayout"/>; <see cref="CodeBytes"/> covers everything before their f16 parameters.</item>
/// </list>
/// Scales and mins are stored as IEEE f16 (saturated to ±65504) because 2 bytes per group is what KIVI
/// budgets and KV activations stay far inside f16 range; quantization uses the stored (rounded) values so
/// the encoder and every reader agree exactly.
/// </remarks>
public readonly record struct BlockLayout
{
    /// <summary>The default tokens per block (the KIVI group).</summary>
    public const int DefaultTokens = 32;

    /// <summary>The default channels per group for per-token quantization.</summary>
    public const int DefaultChannelGroup = 32;

    /// <summary>
    /// Creates a layout, validating it. <paramref name="groupSize"/> counts tokens for
    /// <see cref="QuantAxis.PerChannel"/> (must divide <paramref name="tokens"/>) and channels for
    /// <see cref="QuantAxis.PerToken"/> (a multiple of 8 dividing <paramref name="headDim"/>); float
    /// formats ignore axis and group size (stored as PerToken and 0, so equal storage compares equal).
    /// </summary>
    /// <exception cref="KvSharpException">A dimension or group size is out of range.</exception>
    public BlockLayout(KvFormat format, QuantAxis axis, int groupSize, int tokens, int headDim)
    {
        _ = format.BitsPerElement(); // rejects unknown formats
        if (tokens < 1 || tokens > 1 << 16)
            throw new KvSharpException($"KV block tokens must be in 1..65536, got {tokens}");
        if (headDim < 8 || headDim % 8 != 0 || headDim > 1 << 14)
            throw new KvSharpException($"KV block head dimension must be a positive multiple of 8 (≤ 16384), got {headDim}");
        if (format.IsVidKv())
        {
            if (tokens > VidKvMaxTokens)
                throw new KvSharpException($"{format} blocks hold at most {VidKvMaxTokens} tokens (the DFT basis is tabulated), got {tokens}");
            if (format == KvFormat.VidKvKey && (groupSize < 0 || groupSize > headDim))
                throw new KvSharpException($"{format}: outlier channels must be in 0..{headDim} (the head dimension), got {groupSize}");
            if (format == KvFormat.VidKvValue && (groupSize < 0 || groupSize > tokens))
                throw new KvSharpException($"{format}: salient tokens per block must be in 0..{tokens}, got {groupSize}");
            axis = QuantAxis.PerChannel; // both formats keep their parameters per channel; the axis field is not free
        }
        else if (format.IsQuantized())
        {
            if (axis == QuantAxis.PerChannel && (groupSize < 1 || tokens % groupSize != 0))
                throw new KvSharpException($"per-channel group size must divide the {tokens} tokens of a block, got {groupSize}");
            if (axis == QuantAxis.PerToken && (groupSize < 8 || groupSize % 8 != 0 || headDim % groupSize != 0))
                throw new KvSharpException($"per-token group size must be a multiple of 8 dividing head dimension {headDim}, got {groupSize}");
            if (axis != QuantAxis.PerChannel && axis != QuantAxis.PerToken)
                throw new KvSharpException($"unknown quantization axis {(int)axis}");
        }
        // Float formats have no groups: normalize the ignored fields so equal storage means equal layouts.
        if (!format.IsQuantized() && !format.IsVidKv()) { axis = QuantAxis.PerToken; groupSize = 0; }
        Format = format; Axis = axis; GroupSize = groupSize; Tokens = tokens; HeadDim = headDim;
    }

    /// <summary>Most tokens a VidKV block may hold (its real-DFT basis is tabulated per length).</summary>
    public const int VidKvMaxTokens = 256;

    /// <summary>
    /// A key block as KIVI stores keys: per channel, one group over all <paramref name="tokens"/>. VidKV formats take
    /// their defaults (<see cref="VidKvDefaultParameter"/>).
    /// </summary>
    public static BlockLayout ForKeys(KvFormat format, int headDim, int tokens = DefaultTokens)
        => format.IsVidKv() ? new(format, QuantAxis.PerChannel, VidKvDefaultParameter(format, headDim, tokens), tokens, headDim)
            : new(format, QuantAxis.PerChannel, tokens, tokens, headDim);

    /// <summary>
    /// A value block as KIVI stores values: per token, groups of <paramref name="channelGroup"/> channels (capped at
    /// headDim). VidKV formats ignore the channel group and take their defaults (<see cref="VidKvDefaultParameter"/>).
    /// </summary>
    public static BlockLayout ForValues(KvFormat format, int headDim, int tokens = DefaultTokens, int channelGroup = DefaultChannelGroup)
        => format.IsVidKv() ? ForKeys(format, headDim, tokens)
            : new(format, QuantAxis.PerToken, Math.Min(channelGroup, headDim), tokens, headDim);

    /// <summary>
    /// The <see cref="GroupSize"/> a VidKV block gets by default: half the channels as outlier channels for
    /// <see cref="KvFormat.VidKvKey"/> (VidKV's 1.5-bit key setting: 2 bits on half the channels, 1 bit on the other
    /// half), and tokens/16 salient tokens (2 of 32) for <see cref="KvFormat.VidKvValue"/>.
    /// </summary>
    public static int VidKvDefaultParameter(KvFormat format, int headDim, int tokens) => format switch
    {
        KvFormat.VidKvKey => headDim / 2,
        KvFormat.VidKvValue => tokens / 16,
        _ => throw new KvSharpException($"{format} is not a VidKV format"),
    };

    /// <summary>Storage format of the elements.</summary>
    public KvFormat Format { get; }

    /// <summary>Axis along which quantization parameters are shared (ignored by float formats).</summary>
    public QuantAxis Axis { get; }

    /// <summary>
    /// Tokens per group (per-channel) or channels per group (per-token); ignored by float formats. For
    /// <see cref="KvFormat.VidKvKey"/> the number of outlier (2-bit) channels, for <see cref="KvFormat.VidKvValue"/> the
    /// number of salient (Int4) tokens per block.
    /// </summary>
    public int GroupSize { get; }

    /// <summary>Token capacity of the block.</summary>
    public int Tokens { get; }

    /// <summary>Channels per token (the head dimension).</summary>
    public int HeadDim { get; }

    /// <summary>
    /// Bytes of packed codes (or float elements): Tokens · HeadDim · bits / 8. VidKV formats: everything before their
    /// f16 parameters (masks, codes and salient rows, see <see cref="VidKvLayout"/>).
    /// </summary>
    public int CodeBytes => Format.IsVidKv() ? Vid.ParameterOffset : Tokens * HeadDim / 8 * Format.BitsPerElement();

    /// <summary>Quantization groups in the block (0 for float formats; HeadDim, one per channel, for VidKV formats).</summary>
    public int GroupCount => Format.IsVidKv() ? HeadDim : !Format.IsQuantized() ? 0
        : Axis == QuantAxis.PerChannel ? Tokens / GroupSize * HeadDim : Tokens * (HeadDim / GroupSize);

    /// <summary>Bytes of f16 parameters: GroupCount · ParametersPerGroup · 2 (VidKV: see <see cref="VidKvLayout"/>).</summary>
    public int ParameterBytes => Format.IsVidKv() ? Vid.ByteSize - Vid.ParameterOffset : GroupCount * Format.ParametersPerGroup() * 2;

    /// <summary>Byte offsets inside a VidKV block (meaningful for VidKV formats only).</summary>
    internal VidKvLayout Vid => new(Format, Tokens, HeadDim, GroupSize);

    /// <summary>Exact bytes of one block: codes plus parameters.</summary>
    public int ByteSize => CodeBytes + ParameterBytes;

    /// <summary>Average storage bits per element, parameters included.</summary>
    public double BitsPerElement => ByteSize * 8.0 / ((double)Tokens * HeadDim);

    /// <inheritdoc />
    public override string ToString() => Format == KvFormat.VidKvKey ? $"{Format}/{GroupSize} outlier channels [{Tokens}x{HeadDim}]"
        : Format == KvFormat.VidKvValue ? $"{Format}/{GroupSize} salient tokens [{Tokens}x{HeadDim}]"
        : Format.IsQuantized()
        ? $"{Format}/{Axis}/g{GroupSize} [{Tokens}x{HeadDim}]"
        : $"{Format} [{Tokens}x{HeadDim}]";

    internal void CheckBlock(int blockLength, int tokenCount, string what)
    {
        if (HeadDim == 0) throw new KvSharpException("uninitialized BlockLayout (use its constructor)");
        if (blockLength < ByteSize)
            throw new ArgumentException($"{what} block holds {blockLength} bytes but layout {this} needs {ByteSize}");
        if ((uint)tokenCount > (uint)Tokens)
            throw new ArgumentOutOfRangeException(nameof(tokenCount), $"{tokenCount} tokens in a block of {Tokens}");
    }
}
