using System.Numerics.Tensors;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// ggml's CPU element-wise operators as llama.cpp computes a Llama layer (<see cref="CpuNumerics.LlamaCpp"/>): RMSNorm with
/// its double sum, SwiGLU through ggml's polynomial exp, and f16 rounding. cosf, sinf, expf and powf are the C library's:
/// .NET's MathF calls the same glibc functions on Linux.
/// </summary>
public static class GgmlElementwise
{
    /// <summary>
    /// RMS_NORM then MUL, per row of <paramref name="weight"/>.Length: the float squares summed in double, mean and
    /// 1/sqrt(mean + eps) in float, then (x · scale) · weight.
    /// </summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> y, float eps)
    {
        int d = weight.Length;
        for (int row = 0; row < x.Length / d; row++)
        {
            var xi = x.Slice(row * d, d);
            var yi = y.Slice(row * d, d);
            double sum = 0;
            foreach (var v in xi) sum += v * v;
            float mean = (float)(sum / d);
            float scale = 1.0f / MathF.Sqrt(mean + eps);
            TensorPrimitives.Multiply(xi, scale, yi);
            TensorPrimitives.Multiply(yi, weight, yi);
        }
    }

    /// <summary>
    /// ggml_vec_swiglu_f32 per row of <paramref name="rowLength"/>: gate = silu(gate) · up, the first multiple of 8 of each
    /// row through <see cref="VectorExp"/> (ggml_v_silu: x / (1 + e^−x)), the rest through expf.
    /// </summary>
    public static void SwiGlu(Span<float> gate, ReadOnlySpan<float> up, int rowLength)
    {
        int vectorized = rowLength & ~7;
        for (int row = 0; row < gate.Length / rowLength; row++)
        {
            var g = gate.Slice(row * rowLength, rowLength);
            var u = up.Slice(row * rowLength, rowLength);
            for (int i = 0; i < vectorized; i++) g[i] = g[i] / (1f + VectorExp(0f - g[i])) * u[i];
            for (int i = vectorized; i < rowLength; i++) g[i] = g[i] / (1.0f + MathF.Exp(-g[i])) * u[i];
        }
    }

    /// <summary>
    /// ggml_v_expf (AVX2 + FMA): e^x = 2^n · (1 + p(b)) with n = round(x / ln 2) through the 1.5·2^23 trick, b = x − n ln 2
    /// in two FMA steps, a degree-5 polynomial, and the scaling by 2^n done on the exponent bits (split in two when |n| &gt; 126).
    /// At most 1.45 + 0.5 ulp from e^x.
    /// </summary>
    public static float VectorExp(float x)
    {
        float r = Bits(0x4b400000); // 0x1.8p23
        float z = MathF.FusedMultiplyAdd(x, Bits(0x3fb8aa3b), r); // x · log2(e) + r
        float n = z - r;
        float b = MathF.FusedMultiplyAdd(-n, Bits(0x35bfbe8e), MathF.FusedMultiplyAdd(-n, Bits(0x3f317200), x)); // x − n·ln2 (hi, lo)
        uint e = BitConverter.SingleToUInt32Bits(z) << 23;
        float k = BitConverter.UInt32BitsToSingle(e + BitConverter.SingleToUInt32Bits(1f));
        float u = b * b;
        float j = MathF.FusedMultiplyAdd(
            MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(Bits(0x3c072010), b, Bits(0x3d2b9f17)), u,
                MathF.FusedMultiplyAdd(Bits(0x3e2aaf33), b, Bits(0x3efffedb))),
            u, Bits(0x3f7ffff6) * b);
        if (!(MathF.Abs(n) > 126)) return MathF.FusedMultiplyAdd(j, k, k);
        uint g = n <= 0 ? 0x82000000u : 0u;
        float s1 = BitConverter.UInt32BitsToSingle(g + 0x7f000000u);
        float s2 = BitConverter.UInt32BitsToSingle(e - g);
        return MathF.Abs(n) > 192 ? s1 * s1 : MathF.FusedMultiplyAdd(s2, j, s2) * s1;
    }

    /// <summary>
    /// x rounded to the nearest f16 (ties to even, as F16C's vcvtps2ph), widened back: (float)(Half)x. The normal f16 range
    /// is done on the bits (drop 13 mantissa bits, rounding to even), .NET's conversion does the rest; the fast path exists
    /// because the f16 attention accumulator is rounded after every key.
    /// </summary>
    public static float RoundToHalf(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x), abs = bits & 0x7fffffffu;
        if (abs < 0x38800000u || abs >= 0x47000000u) return (float)(Half)x; // f16 subnormal, ≥ 2^15, inf, NaN
        abs += 0x0fffu + ((abs >> 13) & 1u);
        return BitConverter.UInt32BitsToSingle((bits & 0x80000000u) | (abs & ~0x1fffu));
    }

    /// <summary>Each of <paramref name="x"/> through <see cref="RoundToHalf(float)"/> into <paramref name="y"/>.</summary>
    public static void RoundToHalf(ReadOnlySpan<float> x, Span<float> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = RoundToHalf(x[i]);
    }

    private static float Bits(uint bits) => BitConverter.UInt32BitsToSingle(bits);
}
