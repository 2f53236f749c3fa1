namespace KvSharp.Cache.Blocks;

/// <summary>
/// How one KV block stores its numbers. Float formats store every element as is; quantized
/// formats store packed integer codes plus per-group parameters (f16), see <see cref="BlockLayout"/>.
/// </summary>
public enum KvFormat
{
    /// <summary>IEEE float32, 4 bytes per element.</summary>
    F32,
    /// <summary>IEEE float16 (round to nearest even), 2 bytes per element.</summary>
    F16,
    /// <summary>bfloat16 (the top half of a float32, round to nearest even), 2 bytes per element.</summary>
    BF16,
    /// <summary>
    /// FP8 E4M3 (OCP spec: exponent bias 7, largest finite 448, no infinities, NaN = 0x7F/0xFF),
    /// saturating round to nearest even, 1 byte per element, no scale.
    /// </summary>
    Fp8E4M3,
    /// <summary>8-bit asymmetric: x ≈ min + q·scale, q in [0, 255], scale and min per group.</summary>
    Int8,
    /// <summary>4-bit asymmetric: x ≈ min + q·scale, q in [0, 15], two codes per byte.</summary>
    Int4,
    /// <summary>2-bit asymmetric: x ≈ min + q·scale, q in [0, 3], four codes per byte.</summary>
    Int2,
    /// <summary>
    /// 1.58-bit ternary: x ≈ t·scale, t in {-1, 0, +1}, scale = mean |x| of the group (BitNet b1.58 absmean).
    /// Each trit is stored in 2 bits (code t+1), not 5 per byte: codes stay byte-aligned per 4 channels and
    /// the attention kernels reuse the INT2 path (min = -scale, step = scale) with in-register shifts,
    /// where base-3 packing (1.6 bits) would need a division or table per code for a 20% saving.
    /// </summary>
    Ternary,
    /// <summary>
    /// 1-bit: x ≈ mean + s·scale, s in {-1, +1} (bit 1 = +1, set where x ≥ mean), with mean = mean of the
    /// group and scale = mean |x - mean| (the least-squares scale for those signs).
    /// </summary>
    Binary,
    /// <summary>
    /// VidKV keys (Tao et al. 2025): per block, the <see cref="BlockLayout.GroupSize"/> channels of widest range are
    /// outlier channels at 2 bits (Int2 per channel over the block's tokens); every other channel is coded at 1 bit in
    /// the frequency domain: its token mean (f16) plus the signs of its orthonormal real-DFT coefficients along the
    /// block's tokens times one scale (f16). See <see cref="BlockLayout"/> and docs/quantization.md.
    /// </summary>
    VidKvKey,
    /// <summary>
    /// VidKV values: ternary per channel (x ≈ t·scale_c, scale_c = mean |x| of the channel over the block's ordinary
    /// tokens, 5 trits per byte) with the <see cref="BlockLayout.GroupSize"/> salient tokens of the block (those ternary
    /// hurts most) stored as Int4 rows instead. See <see cref="BlockLayout"/> and docs/quantization.md.
    /// </summary>
    VidKvValue,
}

/// <summary>The axis along which a quantized block shares one scale/min (KIVI: keys per channel, values per token).</summary>
public enum QuantAxis
{
    /// <summary>
    /// Each channel has its own parameters, shared by a group of consecutive tokens (GroupSize tokens,
    /// default the whole block). KIVI's choice for keys, whose outliers live in fixed channels.
    /// </summary>
    PerChannel,
    /// <summary>
    /// Each token has its own parameters per group of consecutive channels (GroupSize channels, default 32).
    /// KIVI's choice for values.
    /// </summary>
    PerToken,
}

/// <summary>Facts about a <see cref="KvFormat"/>.</summary>
public static class KvFormatInfo
{
    /// <summary>
    /// Bits of storage per element (ternary stores 2 bits per trit); for the VidKV formats, which mix code widths,
    /// the widest code (2): <see cref="BlockLayout.BitsPerElement"/> gives their exact average.
    /// </summary>
    public static int BitsPerElement(this KvFormat format) => format switch
    {
        KvFormat.F32 => 32,
        KvFormat.F16 or KvFormat.BF16 => 16,
        KvFormat.Fp8E4M3 or KvFormat.Int8 => 8,
        KvFormat.Int4 => 4,
        KvFormat.Int2 or KvFormat.Ternary => 2,
        KvFormat.Binary => 1,
        KvFormat.VidKvKey or KvFormat.VidKvValue => 2, // the widest code; BlockLayout.BitsPerElement is the exact average
        _ => throw new KvSharpException($"unknown KV block format {(int)format}"),
    };

    /// <summary>Whether the format stores integer codes with per-group parameters (Int8 .. Binary).</summary>
    public static bool IsQuantized(this KvFormat format) => format >= KvFormat.Int8 && format <= KvFormat.Binary;

    /// <summary>Whether the format is one of VidKV's block formats (<see cref="KvFormat.VidKvKey"/>, <see cref="KvFormat.VidKvValue"/>).</summary>
    public static bool IsVidKv(this KvFormat format) => format is KvFormat.VidKvKey or KvFormat.VidKvValue;

    /// <summary>
    /// f16 parameters stored per group: 2 (scale, min) for Int8/4/2, 1 (scale) for ternary,
    /// 2 (scale, mean) for binary, 0 for float formats.
    /// </summary>
    public static int ParametersPerGroup(this KvFormat format) => format switch
    {
        KvFormat.Int8 or KvFormat.Int4 or KvFormat.Int2 or KvFormat.Binary => 2,
        KvFormat.Ternary => 1,
        _ => 0,
    };

    /// <summary>
    /// Parses a format name as written in options ("f32", "f16", "bf16", "fp8", "int8", "int4", "int2", "ternary",
    /// "int1"/"binary", "vidkv-key", "vidkv-value").
    /// </summary>
    public static KvFormat Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "f32" or "fp32" or "float32" => KvFormat.F32,
        "f16" or "fp16" or "float16" => KvFormat.F16,
        "bf16" or "bfloat16" => KvFormat.BF16,
        "fp8" or "f8" or "e4m3" or "fp8e4m3" => KvFormat.Fp8E4M3,
        "int8" or "q8" => KvFormat.Int8,
        "int4" or "q4" => KvFormat.Int4,
        "int2" or "q2" => KvFormat.Int2,
        "ternary" or "int1.58" or "1.58" => KvFormat.Ternary,
        "binary" or "int1" or "1bit" => KvFormat.Binary,
        "vidkv-key" or "vidkvkey" => KvFormat.VidKvKey,
        "vidkv-value" or "vidkvvalue" => KvFormat.VidKvValue,
        _ => throw new KvSharpException($"unknown KV format '{name}' (expected f32, f16, bf16, fp8, int8, int4, int2, ternary, binary, vidkv-key or vidkv-value)"),
    };
}
