using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Float32 dot-product kernels for F32, F16 and BF16 weight rows against float32 activations
/// (plain float products, as llama.cpp does for F32 weights). Each has an AVX2+FMA path and a
/// scalar fallback; the fallbacks are public to the tests so they can be compared directly.
/// </summary>
internal static unsafe class FloatDot
{
    /// <summary>Whether the AVX2/FMA paths run on this machine.</summary>
    public static readonly bool Simd = Avx2.IsSupported && Fma.IsSupported;

    // ---------- F16 / BF16 widening ----------

    /// <summary>Eight IEEE halves to floats with integer ops (.NET exposes no F16C). Normals and inf/NaN are
    /// re-biased in the integer domain (exponent + 112, or 255 for exponent 31); subnormals (exponent 0, value
    /// m·2^-24) go through an int→float conversion. No float operation ever sees a denormal operand: a
    /// denormal multiply costs a ~150-cycle microcode assist, and ~0.2% of typical weights are f16 subnormals.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> HalfToSingle(ushort* p)
    {
        Vector256<int> h = Avx2.ConvertToVector256Int32(p);
        Vector256<int> em = Avx2.And(h, Vector256.Create(0x7fff));
        Vector256<int> normal = Avx2.Add(Avx2.ShiftLeftLogical(em, 13), Vector256.Create(0x38000000));
        Vector256<int> infNan = Avx2.And(Avx2.CompareGreaterThan(em, Vector256.Create(0x7bff)), Vector256.Create(0x7f800000));
        Vector256<int> isSub = Avx2.CompareGreaterThan(Vector256.Create(0x0400), em);
        Vector256<float> sub = Avx.Multiply(Avx.ConvertToVector256Single(em), Vector256.Create(1f / (1 << 24)));
        Vector256<float> magnitude = Avx.BlendVariable(Avx2.Or(normal, infNan).AsSingle(), sub, isSub.AsSingle());
        Vector256<int> sign = Avx2.ShiftLeftLogical(Avx2.Xor(h, em), 16);
        return Avx2.Or(magnitude.AsInt32(), sign).AsSingle();
    }

    /// <summary>Eight bfloat16 to floats (the upper half of a float's bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Bf16ToSingle(ushort* p)
        => Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p), 16).AsSingle();

    /// <summary>Converts <paramref name="n"/> halves to floats (SIMD when available).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void HalfRow(ushort* src, float* dst, int n)
    {
        int i = 0;
        if (Simd) for (; i + 8 <= n; i += 8) Avx.Store(dst + i, HalfToSingle(src + i));
        for (; i < n; i++) dst[i] = (float)BitConverter.UInt16BitsToHalf(src[i]);
    }

    /// <summary>Converts <paramref name="n"/> bfloat16 to floats.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Bf16Row(ushort* src, float* dst, int n)
    {
        int i = 0;
        if (Simd) for (; i + 8 <= n; i += 8) Avx.Store(dst + i, Bf16ToSingle(src + i));
        for (; i < n; i++) dst[i] = BitConverter.Int32BitsToSingle(src[i] << 16);
    }

    // ---------- matvec kernels (one activation row, four weight rows at a time) ----------

    /// <summary>y[k] = dot(w + k*stride, x) for k &lt; 4 (F32 rows).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void F32x4(float* w, long stride, float* x, int n, float* y)
    {
        float* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int i = 0;
        for (; i + 8 <= n; i += 8)
        {
            var xv = Avx.LoadVector256(x + i);
            a0 = Fma.MultiplyAdd(Avx.LoadVector256(w0 + i), xv, a0);
            a1 = Fma.MultiplyAdd(Avx.LoadVector256(w1 + i), xv, a1);
            a2 = Fma.MultiplyAdd(Avx.LoadVector256(w2 + i), xv, a2);
            a3 = Fma.MultiplyAdd(Avx.LoadVector256(w3 + i), xv, a3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; i < n; i++) { s0 += w0[i] * x[i]; s1 += w1[i] * x[i]; s2 += w2[i] * x[i]; s3 += w3[i] * x[i]; }
        y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
    }

    /// <summary>dot(w, x) of one F32 row, two accumulators.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float F32x1(float* w, float* x, int n)
    {
        var a0 = Vector256<float>.Zero; var a1 = a0;
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            a0 = Fma.MultiplyAdd(Avx.LoadVector256(w + i), Avx.LoadVector256(x + i), a0);
            a1 = Fma.MultiplyAdd(Avx.LoadVector256(w + i + 8), Avx.LoadVector256(x + i + 8), a1);
        }
        for (; i + 8 <= n; i += 8) a0 = Fma.MultiplyAdd(Avx.LoadVector256(w + i), Avx.LoadVector256(x + i), a0);
        float s = Vector256.Sum(Avx.Add(a0, a1));
        for (; i < n; i++) s += w[i] * x[i];
        return s;
    }

    /// <summary>
    /// Eight IEEE halves as floats scaled by 2^-112, in three integer ops: the exponent/mantissa bits shifted
    /// into float position are exactly h·2^-112 for normal and subnormal halves (inf/NaN are not preserved,
    /// which no finite weight needs). Sign-extending the halves puts copies of the sign in bits 28..31; the
    /// mask keeps bit 31 and clears 28..30. Callers fold the 2^112 into the activations (see
    /// <see cref="F16x4Scaled"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfBitsScaled(ushort* p) =>
        Avx2.And(Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((short*)p), 13), Vector256.Create(unchecked((int)0x8FFFFFFF))).AsSingle();

    /// <summary>
    /// Decode dot products of four F16 rows against activations pre-scaled by 2^k (<paramref name="xs"/> = x·2^k):
    /// Σ (w·2^-112)(x·2^k) = 2^(k-112) Σ w·x, so y = that sum · 2^(112-k). The scaled widening costs 3 ops per 8
    /// weights instead of 10, which is what lets F16 decode stream weights at memory speed without F16C.
    /// <paramref name="x"/> (unscaled) serves the scalar tail.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void F16x4Scaled(ushort* w, long stride, float* xs, float* x, int n, float unscale, float* y)
    {
        ushort* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        var b0 = a0; var b1 = a0; var b2 = a0; var b3 = a0;
        int i = 0;
        // Two independent accumulator sets (16 weights per row per pass) keep more loads in flight.
        for (; i + 16 <= n; i += 16)
        {
            // Short rows (e.g. 896 halves = 1.8 KB) end before the hardware prefetcher ramps up on the next
            // call's four new streams: fetch the next four rows (read by the next call) at the same offset.
            Sse.Prefetch0(w0 + 4 * stride + i);
            Sse.Prefetch0(w1 + 4 * stride + i);
            Sse.Prefetch0(w2 + 4 * stride + i);
            Sse.Prefetch0(w3 + 4 * stride + i);
            var xv = Avx.LoadVector256(xs + i);
            var xw = Avx.LoadVector256(xs + i + 8);
            a0 = Fma.MultiplyAdd(HalfBitsScaled(w0 + i), xv, a0);
            a1 = Fma.MultiplyAdd(HalfBitsScaled(w1 + i), xv, a1);
            a2 = Fma.MultiplyAdd(HalfBitsScaled(w2 + i), xv, a2);
            a3 = Fma.MultiplyAdd(HalfBitsScaled(w3 + i), xv, a3);
            b0 = Fma.MultiplyAdd(HalfBitsScaled(w0 + i + 8), xw, b0);
            b1 = Fma.MultiplyAdd(HalfBitsScaled(w1 + i + 8), xw, b1);
            b2 = Fma.MultiplyAdd(HalfBitsScaled(w2 + i + 8), xw, b2);
            b3 = Fma.MultiplyAdd(HalfBitsScaled(w3 + i + 8), xw, b3);
        }
        for (; i + 8 <= n; i += 8)
        {
            var xv = Avx.LoadVector256(xs + i);
            a0 = Fma.MultiplyAdd(HalfBitsScaled(w0 + i), xv, a0);
            a1 = Fma.MultiplyAdd(HalfBitsScaled(w1 + i), xv, a1);
            a2 = Fma.MultiplyAdd(HalfBitsScaled(w2 + i), xv, a2);
            a3 = Fma.MultiplyAdd(HalfBitsScaled(w3 + i), xv, a3);
        }
        a0 += b0; a1 += b1; a2 += b2; a3 += b3;
        float s0 = Vector256.Sum(a0) * unscale, s1 = Vector256.Sum(a1) * unscale, s2 = Vector256.Sum(a2) * unscale, s3 = Vector256.Sum(a3) * unscale;
        for (; i < n; i++)
        {
            s0 += Scalar(w0[i], false) * x[i]; s1 += Scalar(w1[i], false) * x[i];
            s2 += Scalar(w2[i], false) * x[i]; s3 += Scalar(w3[i], false) * x[i];
        }
        y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
    }

    /// <summary>
    /// The power-of-two exponent k for <see cref="F16x4Scaled"/>: 112 (products exact as w·x) unless the
    /// activations are so large that x·2^112 would overflow; then the largest k that keeps max|x|·2^k finite.
    /// </summary>
    public static int F16ActivationScaleExponent(float* x, int n)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(new ReadOnlySpan<float>(x, n));
        max = MathF.Abs(max);
        if (!float.IsFinite(max) || max == 0) return 112;
        return Math.Min(112, 125 - Math.ILogB(max));
    }

    /// <summary>y[k] = dot(row k, x) for four F16 (<paramref name="bf16"/> false) or BF16 rows.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Half16x4(ushort* w, long stride, float* x, int n, float* y, bool bf16)
    {
        ushort* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int i = 0;
        if (bf16)
        {
            for (; i + 8 <= n; i += 8)
            {
                var xv = Avx.LoadVector256(x + i);
                a0 = Fma.MultiplyAdd(Bf16ToSingle(w0 + i), xv, a0);
                a1 = Fma.MultiplyAdd(Bf16ToSingle(w1 + i), xv, a1);
                a2 = Fma.MultiplyAdd(Bf16ToSingle(w2 + i), xv, a2);
                a3 = Fma.MultiplyAdd(Bf16ToSingle(w3 + i), xv, a3);
            }
        }
        else
        {
            for (; i + 8 <= n; i += 8)
            {
                var xv = Avx.LoadVector256(x + i);
                a0 = Fma.MultiplyAdd(HalfToSingle(w0 + i), xv, a0);
                a1 = Fma.MultiplyAdd(HalfToSingle(w1 + i), xv, a1);
                a2 = Fma.MultiplyAdd(HalfToSingle(w2 + i), xv, a2);
                a3 = Fma.MultiplyAdd(HalfToSingle(w3 + i), xv, a3);
            }
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; i < n; i++)
        {
            s0 += Scalar(w0[i], bf16) * x[i]; s1 += Scalar(w1[i], bf16) * x[i];
            s2 += Scalar(w2[i], bf16) * x[i]; s3 += Scalar(w3[i], bf16) * x[i];
        }
        y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
    }

    /// <summary>One F16/BF16 row against x.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Half16x1(ushort* w, float* x, int n, bool bf16)
    {
        var a0 = Vector256<float>.Zero;
        int i = 0;
        if (bf16) for (; i + 8 <= n; i += 8) a0 = Fma.MultiplyAdd(Bf16ToSingle(w + i), Avx.LoadVector256(x + i), a0);
        else for (; i + 8 <= n; i += 8) a0 = Fma.MultiplyAdd(HalfToSingle(w + i), Avx.LoadVector256(x + i), a0);
        float s = Vector256.Sum(a0);
        for (; i < n; i++) s += Scalar(w[i], bf16) * x[i];
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scalar(ushort v, bool bf16)
        => bf16 ? BitConverter.Int32BitsToSingle(v << 16) : (float)BitConverter.UInt16BitsToHalf(v);

    // ---------- prefill micro-kernel: 4 weight rows x 3 activation rows ----------

    /// <summary>
    /// y[t*ys + k] = dot(w_k, x_t) for 4 F32 weight rows (stride <paramref name="ws"/>) and 3 activation rows
    /// (stride <paramref name="xs"/>): 12 accumulators, 7 loads per 12 FMAs, so it is compute-bound.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void F32Tile4x3(float* w, long ws, float* x, long xs, int n, float* y, long ys)
    {
        float* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws;
        float* x0 = x, x1 = x + xs, x2 = x + 2 * xs;
        var c00 = Vector256<float>.Zero; var c01 = c00; var c02 = c00; var c03 = c00;
        var c10 = c00; var c11 = c00; var c12 = c00; var c13 = c00;
        var c20 = c00; var c21 = c00; var c22 = c00; var c23 = c00;
        int i = 0;
        for (; i + 8 <= n; i += 8)
        {
            var v0 = Avx.LoadVector256(w0 + i); var v1 = Avx.LoadVector256(w1 + i);
            var v2 = Avx.LoadVector256(w2 + i); var v3 = Avx.LoadVector256(w3 + i);
            var u = Avx.LoadVector256(x0 + i);
            c00 = Fma.MultiplyAdd(v0, u, c00); c01 = Fma.MultiplyAdd(v1, u, c01);
            c02 = Fma.MultiplyAdd(v2, u, c02); c03 = Fma.MultiplyAdd(v3, u, c03);
            u = Avx.LoadVector256(x1 + i);
            c10 = Fma.MultiplyAdd(v0, u, c10); c11 = Fma.MultiplyAdd(v1, u, c11);
            c12 = Fma.MultiplyAdd(v2, u, c12); c13 = Fma.MultiplyAdd(v3, u, c13);
            u = Avx.LoadVector256(x2 + i);
            c20 = Fma.MultiplyAdd(v0, u, c20); c21 = Fma.MultiplyAdd(v1, u, c21);
            c22 = Fma.MultiplyAdd(v2, u, c22); c23 = Fma.MultiplyAdd(v3, u, c23);
        }
        float* r = stackalloc float[12];
        r[0] = Vector256.Sum(c00); r[1] = Vector256.Sum(c01); r[2] = Vector256.Sum(c02); r[3] = Vector256.Sum(c03);
        r[4] = Vector256.Sum(c10); r[5] = Vector256.Sum(c11); r[6] = Vector256.Sum(c12); r[7] = Vector256.Sum(c13);
        r[8] = Vector256.Sum(c20); r[9] = Vector256.Sum(c21); r[10] = Vector256.Sum(c22); r[11] = Vector256.Sum(c23);
        for (; i < n; i++)
            for (int t = 0; t < 3; t++)
                for (int k = 0; k < 4; k++)
                    r[t * 4 + k] += w[k * ws + i] * x[t * xs + i];
        for (int t = 0; t < 3; t++)
            for (int k = 0; k < 4; k++)
                y[t * ys + k] = r[t * 4 + k];
    }

    // ---------- scalar references (fallback for machines without AVX2/FMA) ----------

    /// <summary>Scalar dot of an F32 row.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float F32Scalar(float* w, float* x, int n)
    {
        float s = 0;
        for (int i = 0; i < n; i++) s += w[i] * x[i];
        return s;
    }

    /// <summary>Scalar dot of an F16/BF16 row.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Half16Scalar(ushort* w, float* x, int n, bool bf16)
    {
        float s = 0;
        for (int i = 0; i < n; i++) s += Scalar(w[i], bf16) * x[i];
        return s;
    }
}
