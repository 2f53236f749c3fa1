namespace KvSharp.Formats;

/// <summary>Tensor element types, numbered as in ggml (GGUF stores these numbers).</summary>
public enum GgmlType : uint
{
    /// <summary>32-bit IEEE float.</summary>
    F32 = 0,
    /// <summary>16-bit IEEE float.</summary>
    F16 = 1,
    /// <summary>Blocks of 32: f16 scale d, 32 x 4-bit q; x = d * (q - 8).</summary>
    Q4_0 = 2,
    /// <summary>Blocks of 32: f16 d, f16 m, 32 x 4-bit q; x = d * q + m.</summary>
    Q4_1 = 3,
    /// <summary>Blocks of 32: f16 d, 32 x 5-bit.</summary>
    Q5_0 = 6,
    /// <summary>Blocks of 32: f16 d, f16 m, 32 x 5-bit.</summary>
    Q5_1 = 7,
    /// <summary>Blocks of 32: f16 scale d, 32 x int8 q; x = d * q.</summary>
    Q8_0 = 8,
    /// <summary>Blocks of 32: f32 d, f32 s, 32 x int8 (activation format).</summary>
    Q8_1 = 9,
    /// <summary>K-quant super-blocks of 256, 2-bit.</summary>
    Q2_K = 10,
    /// <summary>K-quant super-blocks of 256, 3-bit.</summary>
    Q3_K = 11,
    /// <summary>K-quant super-blocks of 256: 8 sub-blocks of 32 with 6-bit scales and mins, 4-bit q.</summary>
    Q4_K = 12,
    /// <summary>K-quant super-blocks of 256, 5-bit.</summary>
    Q5_K = 13,
    /// <summary>K-quant super-blocks of 256: 16 sub-blocks of 16 with int8 scales, 6-bit q.</summary>
    Q6_K = 14,
    /// <summary>K-quant super-blocks of 256, 8-bit (activation format).</summary>
    Q8_K = 15,
    /// <summary>8-bit integer.</summary>
    I8 = 24,
    /// <summary>16-bit integer.</summary>
    I16 = 25,
    /// <summary>32-bit integer.</summary>
    I32 = 26,
    /// <summary>64-bit integer.</summary>
    I64 = 27,
    /// <summary>64-bit IEEE float.</summary>
    F64 = 28,
    /// <summary>bfloat16.</summary>
    BF16 = 30,
}

/// <summary>Block geometry of each <see cref="GgmlType"/>.</summary>
public static class GgmlTypeInfo
{
    /// <summary>Elements per block (1 for plain types).</summary>
    public static int BlockSize(GgmlType t) => t switch
    {
        GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q8_1 => 32,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K => 256,
        _ => 1,
    };

    /// <summary>Bytes per block.</summary>
    public static int BlockBytes(GgmlType t) => t switch
    {
        GgmlType.F32 or GgmlType.I32 => 4,
        GgmlType.F16 or GgmlType.BF16 or GgmlType.I16 => 2,
        GgmlType.I8 => 1,
        GgmlType.I64 or GgmlType.F64 => 8,
        GgmlType.Q4_0 => 2 + 16,
        GgmlType.Q4_1 => 4 + 16,
        GgmlType.Q5_0 => 2 + 4 + 16,
        GgmlType.Q5_1 => 4 + 4 + 16,
        GgmlType.Q8_0 => 2 + 32,
        GgmlType.Q8_1 => 8 + 32,
        GgmlType.Q2_K => 256 / 16 + 256 / 4 + 4,
        GgmlType.Q3_K => 256 / 8 + 256 / 4 + 12 + 2,
        GgmlType.Q4_K => 4 + 12 + 128,
        GgmlType.Q5_K => 4 + 12 + 32 + 128,
        GgmlType.Q6_K => 128 + 64 + 16 + 2,
        GgmlType.Q8_K => 4 + 256 + 32,
        _ => throw new NotSupportedException($"unknown ggml type {(uint)t}"),
    };

    /// <summary>Whether <paramref name="t"/> is a known type number.</summary>
    public static bool IsKnown(GgmlType t) => Enum.IsDefined(t);

    /// <summary>Bytes of a row of <paramref name="elements"/> elements (a multiple of the block size).</summary>
    public static long RowBytes(GgmlType t, long elements) => elements / BlockSize(t) * BlockBytes(t);
}
