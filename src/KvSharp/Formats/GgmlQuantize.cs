namespace KvSharp.Formats;

/// <summary>
/// Conversion of float32 values to stored tensor formats, following ggml's reference
/// (scalar) quantizers so the bytes match what llama.cpp's own tools would write.
/// </summary>
public static unsafe class GgmlQuantize
{
    /// <summary>Whether <see cref="Row"/> can write <paramref name="type"/>.</summary>
    public static bool CanWrite(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0;

    /// <summary>
    /// Writes <paramref name="src"/> as <paramref name="type"/> at <paramref name="dst"/>
    /// (<see cref="GgmlTypeInfo.RowBytes"/> bytes); the length must be a multiple of the block size.
    /// </summary>
    public static void Row(GgmlType type, ReadOnlySpan<float> src, byte* dst)
    {
        int n = src.Length;
        switch (type)
        {
            case GgmlType.F32:
                src.CopyTo(new Span<float>(dst, n));
                break;
            case GgmlType.F16:
                { var d = (Half*)dst; for (int i = 0; i < n; i++) d[i] = (Half)src[i]; }
                break;
            case GgmlType.BF16:
                { var d = (ushort*)dst; for (int i = 0; i < n; i++) d[i] = ToBf16(src[i]); }
                break;
            case GgmlType.Q8_0:
                if (n % 32 != 0) throw new ArgumentException($"Q8_0 needs a multiple of 32 values, got {n}");
                for (int b = 0; b < n / 32; b++) Q8_0Block(src.Slice(b * 32, 32), dst + b * 34);
                break;
            case GgmlType.Q4_0:
                if (n % 32 != 0) throw new ArgumentException($"Q4_0 needs a multiple of 32 values, got {n}");
                for (int b = 0; b < n / 32; b++) Q4_0Block(src.Slice(b * 32, 32), dst + b * 18);
                break;
            default:
                throw new NotSupportedException($"writing {type} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0)");
        }
    }

    /// <summary>float32 to bfloat16 with round-to-nearest-even (NaN stays a quiet NaN), as ggml does.</summary>
    public static ushort ToBf16(float f)
    {
        uint u = (uint)BitConverter.SingleToInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    /// <summary>One Q8_0 block: d = max|x|/127 (f16), q = round(x/d) (half away from zero).</summary>
    public static void Q8_0Block(ReadOnlySpan<float> x, byte* blk)
    {
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = MathF.Max(amax, MathF.Abs(x[i]));
        float d = amax / 127;
        float id = d != 0 ? 1.0f / d : 0.0f;
        *(Half*)blk = (Half)d;
        var q = (sbyte*)(blk + 2);
        for (int i = 0; i < 32; i++) q[i] = (sbyte)MathF.Round(x[i] * id, MidpointRounding.AwayFromZero);
    }

    /// <summary>
    /// One Q4_0 block: d = (value of largest magnitude)/-8 (f16), q = min(15, trunc(x/d + 8.5)),
    /// element j in the low nibble of byte j and element j+16 in its high nibble.
    /// </summary>
    public static void Q4_0Block(ReadOnlySpan<float> x, byte* blk)
    {
        float amax = 0, max = 0;
        for (int i = 0; i < 32; i++)
        {
            if (amax < MathF.Abs(x[i])) { amax = MathF.Abs(x[i]); max = x[i]; }
        }
        float d = max / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        *(Half*)blk = (Half)d;
        byte* q = blk + 2;
        for (int j = 0; j < 16; j++)
        {
            int q0 = Math.Min(15, (int)(sbyte)(x[j] * id + 8.5f));
            int q1 = Math.Min(15, (int)(sbyte)(x[j + 16] * id + 8.5f));
            q[j] = (byte)(q0 | (q1 << 4));
        }
    }
}
