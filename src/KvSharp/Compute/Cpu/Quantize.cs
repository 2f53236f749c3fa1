using KvSharp.Formats;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Float32 to ggml block quantizers for weights (Q8_0, Q4_0, Q4_K, Q6_K): used to build test and
/// dummy weights. Q8_0 and Q4_0 follow ggml's reference rounding; Q4_K and Q6_K use a simple
/// range-covering choice of scales (no iterative error search), so their output is valid ggml data
/// but not byte-identical to llama.cpp's quantizer.
/// </summary>
public static unsafe class Quantize
{
    /// <summary>Whether <see cref="Row(GgmlType, ReadOnlySpan{float}, Span{byte})"/> can produce <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>Quantizes <paramref name="src"/> (a multiple of the block size) into <paramref name="dst"/> (RowBytes long).</summary>
    public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        int n = src.Length;
        int bs = GgmlTypeInfo.BlockSize(type);
        if (n % bs != 0)
            throw new ArgumentException($"{n} elements is not a multiple of the {type} block size {bs}", nameof(src));
        if (dst.Length < GgmlTypeInfo.RowBytes(type, n))
            throw new ArgumentException($"destination of {dst.Length} bytes is too small for {n} {type} elements", nameof(dst));
        fixed (float* x = src)
        fixed (byte* y = dst)
        {
            switch (type)
            {
                case GgmlType.F32: Buffer.MemoryCopy(x, y, (long)n * 4, (long)n * 4); break;
                case GgmlType.F16: for (int i = 0; i < n; i++) ((Half*)y)[i] = (Half)x[i]; break;
                case GgmlType.BF16: for (int i = 0; i < n; i++) ((ushort*)y)[i] = ToBf16(x[i]); break;
                case GgmlType.Q8_0: for (int b = 0; b < n / 32; b++) Q8_0(x + b * 32, y + b * 34); break;
                case GgmlType.Q4_0: for (int b = 0; b < n / 32; b++) Q4_0(x + b * 32, y + b * 18); break;
                case GgmlType.Q4_K: for (int b = 0; b < n / 256; b++) Q4_K(x + b * 256, y + b * 144); break;
                case GgmlType.Q6_K: for (int b = 0; b < n / 256; b++) Q6_K(x + b * 256, y + b * 210); break;
                default: throw new NotSupportedException($"quantization to {type} is not supported");
            }
        }
    }

    /// <summary>Quantizes a [rows, cols] float matrix into a freshly allocated byte array of <paramref name="type"/> rows.</summary>
    public static byte[] Matrix(GgmlType type, ReadOnlySpan<float> src, int rows, int cols)
    {
        long rb = GgmlTypeInfo.RowBytes(type, cols);
        var data = new byte[rb * rows];
        for (int r = 0; r < rows; r++)
            Row(type, src.Slice(r * cols, cols), data.AsSpan((int)(r * rb), (int)rb));
        return data;
    }

    /// <summary>Round-to-nearest-even float32 to bfloat16 (NaN kept quiet).</summary>
    public static ushort ToBf16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    private static float AbsMax(float* x, int n, out float signedMax)
    {
        float amax = 0; signedMax = 0;
        for (int j = 0; j < n; j++)
        {
            float a = MathF.Abs(x[j]);
            if (a > amax) { amax = a; signedMax = x[j]; }
        }
        return amax;
    }

    // ggml's reference: d = amax / 127, q = round-half-away(x / d).
    private static void Q8_0(float* x, byte* b)
    {
        float amax = AbsMax(x, 32, out _);
        float d = amax / 127f;
        float id = d != 0 ? 1f / d : 0f;
        *(Half*)b = (Half)d;
        sbyte* q = (sbyte*)(b + 2);
        for (int j = 0; j < 32; j++) q[j] = (sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
    }

    // ggml's reference: d = (value of largest magnitude) / -8 so that value maps to q = 0 exactly.
    private static void Q4_0(float* x, byte* b)
    {
        AbsMax(x, 32, out float max);
        float d = max / -8f;
        float id = d != 0 ? 1f / d : 0f;
        *(Half*)b = (Half)d;
        byte* q = b + 2;
        for (int j = 0; j < 16; j++)
        {
            int q0 = Math.Min(15, (int)(x[j] * id + 8.5f));
            int q1 = Math.Min(15, (int)(x[j + 16] * id + 8.5f));
            q[j] = (byte)(q0 | (q1 << 4));
        }
    }

    private static int CeilClamp(float v, int max) => Math.Clamp((int)MathF.Ceiling(v), 0, max);

    // Simple Q4_K: per sub-block of 32 take [min(0, lo), hi]; the 6-bit min and scale are rounded up
    // (ceil) so the quantization grid always covers the sub-block's range.
    private static void Q4_K(float* x, byte* b)
    {
        float* mins = stackalloc float[8];
        float* steps = stackalloc float[8];
        float maxMin = 0;
        for (int j = 0; j < 8; j++)
        {
            float lo = 0;
            for (int l = 0; l < 32; l++) lo = MathF.Min(lo, x[j * 32 + l]);
            mins[j] = -lo;
            maxMin = MathF.Max(maxMin, -lo);
        }
        float dmin = (float)(Half)(maxMin / 63f);
        int* lm = stackalloc int[8];
        int* ls = stackalloc int[8];
        float maxStep = 0;
        for (int j = 0; j < 8; j++)
        {
            lm[j] = dmin > 0 ? CeilClamp(mins[j] / dmin, 63) : 0;
            float hi = float.MinValue;
            for (int l = 0; l < 32; l++) hi = MathF.Max(hi, x[j * 32 + l]);
            steps[j] = MathF.Max(0, hi + dmin * lm[j]) / 15f;
            maxStep = MathF.Max(maxStep, steps[j]);
        }
        float d = (float)(Half)(maxStep / 63f);
        for (int j = 0; j < 8; j++) ls[j] = d > 0 ? CeilClamp(steps[j] / d, 63) : 0;

        *(Half*)b = (Half)d;
        *(Half*)(b + 2) = (Half)dmin;
        byte* sc = b + 4;
        for (int j = 0; j < 12; j++) sc[j] = 0;
        for (int j = 0; j < 8; j++)
        {
            if (j < 4)
            {
                sc[j] = (byte)ls[j];
                sc[j + 4] = (byte)lm[j];
            }
            else
            {
                sc[j + 4] = (byte)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
                sc[j - 4] |= (byte)((ls[j] >> 4) << 6);
                sc[j] |= (byte)((lm[j] >> 4) << 6);
            }
        }
        byte* q = b + 16;
        for (int k = 0; k < 4; k++)
        {
            for (int l = 0; l < 32; l++)
            {
                int lo = Q4KLevel(x[64 * k + l], d * ls[2 * k], dmin * lm[2 * k]);
                int hi = Q4KLevel(x[64 * k + 32 + l], d * ls[2 * k + 1], dmin * lm[2 * k + 1]);
                q[32 * k + l] = (byte)(lo | (hi << 4));
            }
        }
    }

    private static int Q4KLevel(float x, float step, float min)
        => step > 0 ? Math.Clamp((int)MathF.Round((x + min) / step), 0, 15) : 0;

    // Simple Q6_K: per sub-block of 16 a symmetric step amax/31 (levels -31..31 of the -32..31 range);
    // the int8 scales are rounded up against a super-block d = max step / 127.
    private static void Q6_K(float* x, byte* b)
    {
        float* steps = stackalloc float[16];
        float maxStep = 0;
        for (int j = 0; j < 16; j++)
        {
            steps[j] = AbsMax(x + 16 * j, 16, out _) / 31f;
            maxStep = MathF.Max(maxStep, steps[j]);
        }
        float d = (float)(Half)(maxStep / 127f);
        byte* ql = b;
        byte* qh = b + 128;
        sbyte* sc = (sbyte*)(b + 192);
        *(Half*)(b + 208) = (Half)d;
        for (int j = 0; j < 16; j++) sc[j] = (sbyte)(d > 0 ? CeilClamp(steps[j] / d, 127) : 0);
        for (int j = 0; j < 64; j++) qh[j] = 0;
        for (int j = 0; j < 128; j++) ql[j] = 0;
        for (int i = 0; i < 256; i++)
        {
            float step = d * sc[i / 16];
            int q = step > 0 ? Math.Clamp((int)MathF.Round(x[i] / step), -32, 31) + 32 : 32;
            // Element i sits in half h, group g (of 32) at lane l: nibble of ql, 2 bits of qh.
            int h = i / 128, g = (i % 128) / 32, l = i % 32;
            int qlIndex = 64 * h + l + (g & 1) * 32;
            ql[qlIndex] |= (byte)((q & 0xF) << ((g >> 1) * 4));
            qh[32 * h + l] |= (byte)((q >> 4) << (2 * g));
        }
    }
}
