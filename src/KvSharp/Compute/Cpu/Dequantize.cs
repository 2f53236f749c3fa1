using KvSharp.Formats;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Scalar dequantization of stored weight rows to float32: the reference definitions of every
/// supported ggml block format (the SIMD matmul kernels are tested against these).
/// </summary>
public static unsafe class Dequantize
{
    /// <summary>Dequantizes row <paramref name="row"/> of <paramref name="w"/> into <paramref name="dst"/> (length = cols).</summary>
    public static void Row(TensorView w, long row, Span<float> dst)
    {
        long cols = w.Cols;
        if (row < 0 || row >= w.Rows)
            throw new ArgumentOutOfRangeException(nameof(row), $"row {row} is outside tensor {w.Name} with {w.Rows} rows");
        byte* p = w.Data + GgmlTypeInfo.RowBytes(w.Type, cols) * row;
        Block(w.Type, p, dst.Slice(0, (int)cols));
    }

    /// <summary>Whether <see cref="Block"/> can decode <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K;

    /// <summary>
    /// Dequantizes dst.Length elements (a multiple of the block size) of type <paramref name="type"/>
    /// stored at <paramref name="p"/>.
    /// </summary>
    public static void Block(GgmlType type, byte* p, Span<float> dst)
    {
        int n = dst.Length;
        int bs = GgmlTypeInfo.BlockSize(type);
        if (n % bs != 0)
            throw new ArgumentException($"{n} elements is not a multiple of the {type} block size {bs}", nameof(dst));
        fixed (float* y = dst)
        {
            switch (type)
            {
                case GgmlType.F32:
                    Buffer.MemoryCopy(p, y, (long)n * 4, (long)n * 4);
                    break;
                case GgmlType.F16:
                    for (int i = 0; i < n; i++) y[i] = (float)((Half*)p)[i];
                    break;
                case GgmlType.BF16:
                    for (int i = 0; i < n; i++) y[i] = BitConverter.Int32BitsToSingle(((ushort*)p)[i] << 16);
                    break;
                case GgmlType.Q4_0: for (int b = 0; b < n / 32; b++) Q4_0(p + b * 18, y + b * 32); break;
                case GgmlType.Q4_1: for (int b = 0; b < n / 32; b++) Q4_1(p + b * 20, y + b * 32); break;
                case GgmlType.Q5_0: for (int b = 0; b < n / 32; b++) Q5_0(p + b * 22, y + b * 32); break;
                case GgmlType.Q5_1: for (int b = 0; b < n / 32; b++) Q5_1(p + b * 24, y + b * 32); break;
                case GgmlType.Q8_0: for (int b = 0; b < n / 32; b++) Q8_0(p + b * 34, y + b * 32); break;
                case GgmlType.Q2_K: for (int b = 0; b < n / 256; b++) Q2_K(p + b * 84, y + b * 256); break;
                case GgmlType.Q3_K: for (int b = 0; b < n / 256; b++) Q3_K(p + b * 110, y + b * 256); break;
                case GgmlType.Q4_K: for (int b = 0; b < n / 256; b++) Q4_K(p + b * 144, y + b * 256); break;
                case GgmlType.Q5_K: for (int b = 0; b < n / 256; b++) Q5_K(p + b * 176, y + b * 256); break;
                case GgmlType.Q6_K: for (int b = 0; b < n / 256; b++) Q6_K(p + b * 210, y + b * 256); break;
                case GgmlType.Q8_K: for (int b = 0; b < n / 256; b++) Q8_K(p + b * 292, y + b * 256); break;
                default:
                    throw new NotSupportedException($"dequantization of {type} is not supported");
            }
        }
    }

    private static float H(byte* p) => (float)*(Half*)p;

    // Q4_0: f16 d | 16 bytes; element j is the low nibble of byte j, element j+16 the high nibble.
    private static void Q4_0(byte* b, float* y)
    {
        float d = H(b);
        byte* q = b + 2;
        for (int j = 0; j < 16; j++)
        {
            y[j] = ((q[j] & 0xF) - 8) * d;
            y[j + 16] = ((q[j] >> 4) - 8) * d;
        }
    }

    // Q4_1: f16 d, f16 m | 16 bytes; x = q * d + m.
    private static void Q4_1(byte* b, float* y)
    {
        float d = H(b), m = H(b + 2);
        byte* q = b + 4;
        for (int j = 0; j < 16; j++)
        {
            y[j] = (q[j] & 0xF) * d + m;
            y[j + 16] = (q[j] >> 4) * d + m;
        }
    }

    // Q5_0: f16 d | u32 high bits (bit j belongs to element j) | 16 nibble bytes; x = d * (q - 16).
    private static void Q5_0(byte* b, float* y)
    {
        float d = H(b);
        uint qh = *(uint*)(b + 2);
        byte* q = b + 6;
        for (int j = 0; j < 16; j++)
        {
            int h0 = (int)((qh >> j) & 1) << 4, h1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (((q[j] & 0xF) | h0) - 16) * d;
            y[j + 16] = (((q[j] >> 4) | h1) - 16) * d;
        }
    }

    // Q5_1: f16 d, f16 m | u32 high bits | 16 nibble bytes; x = q * d + m.
    private static void Q5_1(byte* b, float* y)
    {
        float d = H(b), m = H(b + 2);
        uint qh = *(uint*)(b + 4);
        byte* q = b + 8;
        for (int j = 0; j < 16; j++)
        {
            int h0 = (int)((qh >> j) & 1) << 4, h1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = ((q[j] & 0xF) | h0) * d + m;
            y[j + 16] = ((q[j] >> 4) | h1) * d + m;
        }
    }

    // Q8_0: f16 d | 32 int8.
    private static void Q8_0(byte* b, float* y)
    {
        float d = H(b);
        sbyte* q = (sbyte*)(b + 2);
        for (int j = 0; j < 32; j++) y[j] = q[j] * d;
    }

    // Q2_K: 16 scale bytes (low nibble scale, high nibble min) | 64 bytes of 2-bit q | f16 d | f16 dmin.
    // Each 128-element half uses 32 q bytes; shift s in {0,2,4,6} selects 32 elements, split in two sub-blocks of 16.
    private static void Q2_K(byte* b, float* y)
    {
        byte* sc = b;
        byte* q = b + 16;
        float d = H(b + 80), dmin = H(b + 82);
        int si = 0;
        for (int half = 0; half < 2; half++, q += 32)
        {
            for (int shift = 0; shift < 8; shift += 2)
            {
                for (int sub = 0; sub < 2; sub++)
                {
                    byte s = sc[si++];
                    float dl = d * (s & 0xF), ml = dmin * (s >> 4);
                    for (int l = 0; l < 16; l++) *y++ = dl * ((q[sub * 16 + l] >> shift) & 3) - ml;
                }
            }
        }
    }

    /// <summary>Unpacks Q3_K's 12 bytes of sixteen 6-bit scales (stored biased by 32) to signed values.</summary>
    internal static void Q3_KScales(byte* s, sbyte* dst)
    {
        // Low 4 bits: bytes 0..7, nibble-split (scales 0..7 low nibbles, 8..15 high nibbles).
        // High 2 bits: bytes 8..11, scale j takes bits 2*(j/4).. of byte 8 + (j % 4).
        for (int j = 0; j < 16; j++)
        {
            int low = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
            int high = (s[8 + (j % 4)] >> (2 * (j / 4))) & 3;
            dst[j] = (sbyte)((low | (high << 4)) - 32);
        }
    }

    // Q3_K: 32 bytes hmask | 64 bytes 2-bit low q | 12 bytes scales | f16 d. q = low - (hbit ? 0 : 4).
    private static void Q3_K(byte* b, float* y)
    {
        byte* hm = b;
        byte* q = b + 32;
        sbyte* scales = stackalloc sbyte[16];
        Q3_KScales(b + 96, scales);
        float d = H(b + 108);
        int si = 0;
        int m = 1;
        for (int half = 0; half < 2; half++, q += 32)
        {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1)
            {
                for (int sub = 0; sub < 2; sub++)
                {
                    float dl = d * scales[si++];
                    for (int l = 0; l < 16; l++)
                    {
                        int idx = sub * 16 + l;
                        int v = ((q[idx] >> shift) & 3) - ((hm[idx] & m) != 0 ? 0 : 4);
                        *y++ = dl * v;
                    }
                }
            }
        }
    }

    /// <summary>
    /// Scale and min of sub-block <paramref name="j"/> (0..7) from the 12 packed bytes of Q4_K/Q5_K:
    /// sub-blocks 0..3 keep 6 bits in bytes j and j+4; 4..7 combine a nibble of byte j+4 with the top
    /// two bits of bytes j-4 (scale) and j (min).
    /// </summary>
    internal static void ScaleMinK4(int j, byte* q, out int scale, out int min)
    {
        if (j < 4)
        {
            scale = q[j] & 63;
            min = q[j + 4] & 63;
        }
        else
        {
            scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }

    // Q4_K: f16 d | f16 dmin | 12 bytes scales/mins | 128 bytes. Each 64 elements use 32 bytes: low nibbles
    // then high nibbles, with sub-block scales 2k and 2k+1. x = d*sc*q - dmin*m.
    private static void Q4_K(byte* b, float* y)
    {
        float d = H(b), dmin = H(b + 2);
        byte* sc = b + 4;
        byte* q = b + 16;
        for (int k = 0; k < 4; k++, q += 32)
        {
            ScaleMinK4(2 * k, sc, out int s1, out int m1);
            ScaleMinK4(2 * k + 1, sc, out int s2, out int m2);
            float d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - mm1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - mm2;
        }
    }

    // Q5_K: like Q4_K plus 32 bytes of high bits after the scales: bit 2k of qh[l] is the 5th bit of the
    // low-nibble element l of pair k, bit 2k+1 that of the high-nibble element.
    private static void Q5_K(byte* b, float* y)
    {
        float d = H(b), dmin = H(b + 2);
        byte* sc = b + 4;
        byte* qh = b + 16;
        byte* q = b + 48;
        for (int k = 0; k < 4; k++, q += 32)
        {
            ScaleMinK4(2 * k, sc, out int s1, out int m1);
            ScaleMinK4(2 * k + 1, sc, out int s2, out int m2);
            float d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2;
            for (int l = 0; l < 32; l++) *y++ = d1 * ((q[l] & 0xF) + (((qh[l] >> (2 * k)) & 1) << 4)) - mm1;
            for (int l = 0; l < 32; l++) *y++ = d2 * ((q[l] >> 4) + (((qh[l] >> (2 * k + 1)) & 1) << 4)) - mm2;
        }
    }

    // Q6_K: 128 bytes low nibbles | 64 bytes high 2-bit pairs | 16 int8 scales | f16 d.
    // Each 128-element half uses 64 ql bytes, 32 qh bytes and 8 scales (one per 16 elements).
    private static void Q6_K(byte* b, float* y)
    {
        byte* ql = b;
        byte* qh = b + 128;
        sbyte* sc = (sbyte*)(b + 192);
        float d = H(b + 208);
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128)
        {
            for (int l = 0; l < 32; l++)
            {
                int s = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[s] * q1;
                y[l + 32] = d * sc[s + 2] * q2;
                y[l + 64] = d * sc[s + 4] * q3;
                y[l + 96] = d * sc[s + 6] * q4;
            }
        }
    }

    // Q8_K: f32 d | 256 int8 | 16 int16 block sums (ignored here).
    private static void Q8_K(byte* b, float* y)
    {
        float d = *(float*)b;
        sbyte* q = (sbyte*)(b + 4);
        for (int j = 0; j < 256; j++) y[j] = d * q[j];
    }
}
