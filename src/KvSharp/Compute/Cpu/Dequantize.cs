using KvSharp.Formats;

namespace KvSharp.Compute.Cpu;

/// <summary>Scalar dequantization of stored weight rows to float32 (the reference definitions).</summary>
public static unsafe class Dequantize
{
    /// <summary>Dequantizes row <paramref name="row"/> of <paramref name="w"/> into <paramref name="dst"/> (length = cols).</summary>
    public static void Row(TensorView w, long row, Span<float> dst)
    {
        long cols = w.Cols;
        byte* p = w.Data + GgmlTypeInfo.RowBytes(w.Type, cols) * row;
        Block(w.Type, p, dst.Slice(0, (int)cols));
    }

    /// <summary>Dequantizes dst.Length elements of type <paramref name="type"/> stored at <paramref name="p"/>.</summary>
    public static void Block(GgmlType type, byte* p, Span<float> dst)
    {
        int n = dst.Length;
        switch (type)
        {
            case GgmlType.F32:
                new ReadOnlySpan<float>(p, n).CopyTo(dst);
                break;
            case GgmlType.F16:
                { var s = (Half*)p; for (int i = 0; i < n; i++) dst[i] = (float)s[i]; }
                break;
            case GgmlType.BF16:
                { var s = (ushort*)p; for (int i = 0; i < n; i++) dst[i] = BitConverter.Int32BitsToSingle(s[i] << 16); }
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < n / 32; b++)
                {
                    byte* blk = p + b * 34;
                    float d = (float)*(Half*)blk;
                    sbyte* q = (sbyte*)(blk + 2);
                    for (int i = 0; i < 32; i++) dst[b * 32 + i] = d * q[i];
                }
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < n / 32; b++)
                {
                    byte* blk = p + b * 18;
                    float d = (float)*(Half*)blk;
                    byte* q = blk + 2;
                    for (int i = 0; i < 16; i++)
                    {
                        dst[b * 32 + i] = d * ((q[i] & 0xF) - 8);
                        dst[b * 32 + i + 16] = d * ((q[i] >> 4) - 8);
                    }
                }
                break;
            default:
                throw new NotSupportedException($"dequantization of {type} is not supported");
        }
    }
}
