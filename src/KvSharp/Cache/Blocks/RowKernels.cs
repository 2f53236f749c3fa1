using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// The inner loops every block kernel reduces to, over a run of elements of token rows. Elements are widened
/// in registers by the reader <typeparamref name="R"/>; nothing is written back as floats except the caller's
/// accumulator. The vector path needs <c>first</c>, strides and lengths that are multiples of 8 (else the
/// scalar loop runs).
/// </summary>
/// <remarks>
/// Every variant (one row, four rows, four queries) performs, per (query, token), exactly the same float
/// operations in the same order: one accumulator over chunks of 8 channels, then the same pairwise reduction
/// (<see cref="Reduce4"/>); values add token by token. Hence a GQA group's results are bit-identical to one
/// call per query, whichever blocking the caller picks.
/// </remarks>
internal static class RowKernels<R> where R : struct, IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Vectorizable(bool simd, int first, int stride, int n) => simd && ((first | stride | n) & 7) == 0;

    /// <summary>Lane k = ((a_k[0]+a_k[1]) + (a_k[2]+a_k[3])) + ((a_k[4]+a_k[5]) + (a_k[6]+a_k[7])).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Reduce4(Vector256<float> a0, Vector256<float> a1, Vector256<float> a2, Vector256<float> a3)
    {
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
        return Sse.Add(h.GetLower(), h.GetUpper());
    }

    /// <summary>Σ_i w[i] · x[first + i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(bool simd, ref byte codes, int first, ReadOnlySpan<float> w)
    {
        int n = w.Length;
        ref float wr = ref MemoryMarshal.GetReference(w);
        if (Vectorizable(simd, first, 0, n))
        {
            var acc = Vector256<float>.Zero;
            for (int i = 0; i < n; i += 8)
                acc = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref wr, (nuint)i), acc);
            return Reduce4(acc, acc, acc, acc).ToScalar();
        }
        float sum = 0;
        for (int i = 0; i < n; i++) sum += Unsafe.Add(ref wr, i) * R.Load1(ref codes, first + i);
        return sum;
    }

    /// <summary>Four token rows, one weight vector: lane k = Σ_i w[i] · x[first + k·stride + i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Dot4Rows(bool simd, ref byte codes, int first, int stride, ReadOnlySpan<float> w)
    {
        int n = w.Length;
        if (!Vectorizable(simd, first, stride, n))
            return Vector128.Create(Dot(simd, ref codes, first, w), Dot(simd, ref codes, first + stride, w),
                Dot(simd, ref codes, first + 2 * stride, w), Dot(simd, ref codes, first + 3 * stride, w));
        ref float wr = ref MemoryMarshal.GetReference(w);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int i = 0; i < n; i += 8)
        {
            var wv = Vector256.LoadUnsafe(ref wr, (nuint)i);
            a0 = Fma.MultiplyAdd(R.Load8(ref codes, first + i), wv, a0);
            a1 = Fma.MultiplyAdd(R.Load8(ref codes, first + stride + i), wv, a1);
            a2 = Fma.MultiplyAdd(R.Load8(ref codes, first + 2 * stride + i), wv, a2);
            a3 = Fma.MultiplyAdd(R.Load8(ref codes, first + 3 * stride + i), wv, a3);
        }
        return Reduce4(a0, a1, a2, a3);
    }

    /// <summary>One token row, four weight vectors w[k·wStride ..]: lane k = Σ_i w[k·wStride + i] · x[first + i], i &lt; n.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Dot4Queries(bool simd, ref byte codes, int first, ReadOnlySpan<float> w, int wStride, int n)
    {
        if (!Vectorizable(simd, first, wStride, n))
            return Vector128.Create(Dot(simd, ref codes, first, w.Slice(0, n)), Dot(simd, ref codes, first, w.Slice(wStride, n)),
                Dot(simd, ref codes, first, w.Slice(2 * wStride, n)), Dot(simd, ref codes, first, w.Slice(3 * wStride, n)));
        _ = w[3 * wStride + n - 1];
        ref float wr = ref MemoryMarshal.GetReference(w);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int i = 0; i < n; i += 8)
        {
            var x = R.Load8(ref codes, first + i);
            a0 = Fma.MultiplyAdd(x, Vector256.LoadUnsafe(ref wr, (nuint)i), a0);
            a1 = Fma.MultiplyAdd(x, Vector256.LoadUnsafe(ref wr, (nuint)(wStride + i)), a1);
            a2 = Fma.MultiplyAdd(x, Vector256.LoadUnsafe(ref wr, (nuint)(2 * wStride + i)), a2);
            a3 = Fma.MultiplyAdd(x, Vector256.LoadUnsafe(ref wr, (nuint)(3 * wStride + i)), a3);
        }
        return Reduce4(a0, a1, a2, a3);
    }

    /// <summary>
    /// Two token rows, four weight vectors w[k·wStride ..]: row r's lane k = Σ_i w[k·wStride + i] · x[first + r·stride + i],
    /// i &lt; n — <see cref="Dot4Queries"/> of each row (same accumulators, same reduction), with every 8-element chunk
    /// of the four weight vectors loaded once for both rows.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector128<float> Row0, Vector128<float> Row1) Dot2Rows4Queries(bool simd, ref byte codes, int first, int stride, ReadOnlySpan<float> w, int wStride, int n)
    {
        if (!Vectorizable(simd, first, stride | wStride, n))
            return (Dot4Queries(simd, ref codes, first, w, wStride, n), Dot4Queries(simd, ref codes, first + stride, w, wStride, n));
        _ = w[3 * wStride + n - 1];
        // Unsigned offsets from per-row and per-query base references: no index arithmetic or sign extension per load.
        ref float w0 = ref MemoryMarshal.GetReference(w);
        ref float w1 = ref Unsafe.Add(ref w0, wStride);
        ref float w2 = ref Unsafe.Add(ref w1, wStride);
        ref float w3 = ref Unsafe.Add(ref w2, wStride);
        ref byte row0 = ref Unsafe.Add(ref codes, R.ByteOffset((nuint)first));
        ref byte row1 = ref Unsafe.Add(ref codes, R.ByteOffset((nuint)(first + stride)));
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        for (nuint i = 0; i < (nuint)n; i += 8)
        {
            nuint o = R.ByteOffset(i);
            var x = R.Load8(ref Unsafe.Add(ref row0, o), 0);
            var y = R.Load8(ref Unsafe.Add(ref row1, o), 0);
            var v = Vector256.LoadUnsafe(ref w0, i);
            a0 = Fma.MultiplyAdd(x, v, a0);
            b0 = Fma.MultiplyAdd(y, v, b0);
            v = Vector256.LoadUnsafe(ref w1, i);
            a1 = Fma.MultiplyAdd(x, v, a1);
            b1 = Fma.MultiplyAdd(y, v, b1);
            v = Vector256.LoadUnsafe(ref w2, i);
            a2 = Fma.MultiplyAdd(x, v, a2);
            b2 = Fma.MultiplyAdd(y, v, b2);
            v = Vector256.LoadUnsafe(ref w3, i);
            a3 = Fma.MultiplyAdd(x, v, a3);
            b3 = Fma.MultiplyAdd(y, v, b3);
        }
        return (Reduce4(a0, a1, a2, a3), Reduce4(b0, b1, b2, b3));
    }

    /// <summary>dst[i] = x[first + i] (widens stored parameters).</summary>
    public static void Widen(bool simd, ref byte codes, int first, Span<float> dst)
    {
        int n = dst.Length, i = 0;
        ref float dr = ref MemoryMarshal.GetReference(dst);
        if (simd && (first & 7) == 0)
            for (; i + 8 <= n; i += 8) R.Load8(ref codes, first + i).StoreUnsafe(ref dr, (nuint)i);
        for (; i < n; i++) Unsafe.Add(ref dr, i) = R.Load1(ref codes, first + i);
    }

    /// <summary>acc[i] = fma(fma(x[first + i], step[i], min[i]), w, acc[i]) (per-channel parameters).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyAffine(bool simd, ref byte codes, int first, float w, ReadOnlySpan<float> min, ReadOnlySpan<float> step, Span<float> acc)
    {
        int n = acc.Length;
        ref float ar = ref MemoryMarshal.GetReference(acc);
        ref float mr = ref MemoryMarshal.GetReference(min);
        ref float sr = ref MemoryMarshal.GetReference(step);
        if (Vectorizable(simd, first, 0, n))
        {
            var vw = Vector256.Create(w);
            for (int i = 0; i < n; i += 8)
            {
                var v = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref sr, (nuint)i), Vector256.LoadUnsafe(ref mr, (nuint)i));
                Fma.MultiplyAdd(v, vw, Vector256.LoadUnsafe(ref ar, (nuint)i)).StoreUnsafe(ref ar, (nuint)i);
            }
            return;
        }
        for (int i = 0; i < n; i++)
            Unsafe.Add(ref ar, i) = MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(R.Load1(ref codes, first + i), Unsafe.Add(ref sr, i), Unsafe.Add(ref mr, i)), w, Unsafe.Add(ref ar, i));
    }

    /// <summary>Four token rows added in order with per-channel parameters (as four <see cref="AxpyAffine"/> calls).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyAffine4Rows(bool simd, ref byte codes, int first, int stride, Vector128<float> w, ReadOnlySpan<float> min, ReadOnlySpan<float> step, Span<float> acc)
    {
        int n = acc.Length;
        if (!Vectorizable(simd, first, stride, n))
        {
            for (int k = 0; k < 4; k++) AxpyAffine(simd, ref codes, first + k * stride, w[k], min, step, acc);
            return;
        }
        ref float ar = ref MemoryMarshal.GetReference(acc);
        ref float mr = ref MemoryMarshal.GetReference(min);
        ref float sr = ref MemoryMarshal.GetReference(step);
        Vector256<float> w0 = Vector256.Create(w[0]), w1 = Vector256.Create(w[1]), w2 = Vector256.Create(w[2]), w3 = Vector256.Create(w[3]);
        for (int i = 0; i < n; i += 8)
        {
            var s = Vector256.LoadUnsafe(ref sr, (nuint)i);
            var m = Vector256.LoadUnsafe(ref mr, (nuint)i);
            var y = Vector256.LoadUnsafe(ref ar, (nuint)i);
            y = Fma.MultiplyAdd(Fma.MultiplyAdd(R.Load8(ref codes, first + i), s, m), w0, y);
            y = Fma.MultiplyAdd(Fma.MultiplyAdd(R.Load8(ref codes, first + stride + i), s, m), w1, y);
            y = Fma.MultiplyAdd(Fma.MultiplyAdd(R.Load8(ref codes, first + 2 * stride + i), s, m), w2, y);
            Fma.MultiplyAdd(Fma.MultiplyAdd(R.Load8(ref codes, first + 3 * stride + i), s, m), w3, y).StoreUnsafe(ref ar, (nuint)i);
        }
    }

    /// <summary>One token row into four accumulators with per-channel parameters: v = fma(x, step, min) once, acc_k = fma(v, w[k], acc_k).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyAffine4Queries(bool simd, ref byte codes, int first, Vector128<float> w, ReadOnlySpan<float> min, ReadOnlySpan<float> step, Span<float> acc, int stride)
    {
        int n = min.Length;
        if (!Vectorizable(simd, first, stride, n))
        {
            for (int k = 0; k < 4; k++) AxpyAffine(simd, ref codes, first, w[k], min, step, acc.Slice(k * stride, n));
            return;
        }
        _ = acc[3 * stride + n - 1];
        _ = step[n - 1];
        ref float ar = ref MemoryMarshal.GetReference(acc);
        ref float mr = ref MemoryMarshal.GetReference(min);
        ref float sr = ref MemoryMarshal.GetReference(step);
        Vector256<float> w0 = Vector256.Create(w[0]), w1 = Vector256.Create(w[1]), w2 = Vector256.Create(w[2]), w3 = Vector256.Create(w[3]);
        for (int i = 0; i < n; i += 8)
        {
            var v = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref sr, (nuint)i), Vector256.LoadUnsafe(ref mr, (nuint)i));
            Fma.MultiplyAdd(v, w0, Vector256.LoadUnsafe(ref ar, (nuint)i)).StoreUnsafe(ref ar, (nuint)i);
            Fma.MultiplyAdd(v, w1, Vector256.LoadUnsafe(ref ar, (nuint)(stride + i))).StoreUnsafe(ref ar, (nuint)(stride + i));
            Fma.MultiplyAdd(v, w2, Vector256.LoadUnsafe(ref ar, (nuint)(2 * stride + i))).StoreUnsafe(ref ar, (nuint)(2 * stride + i));
            Fma.MultiplyAdd(v, w3, Vector256.LoadUnsafe(ref ar, (nuint)(3 * stride + i))).StoreUnsafe(ref ar, (nuint)(3 * stride + i));
        }
    }
}
