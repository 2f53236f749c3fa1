using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// The three inner loops every block kernel reduces to, over a run of elements of one token row.
/// The elements are widened in registers by the reader <typeparamref name="R"/>; nothing is written
/// back as floats except the caller's accumulator.
/// </summary>
internal static class RowKernels<R> where R : struct, IElementReader
{
    /// <summary>Σ_i w[i] · x[first + i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(bool simd, ref byte codes, int first, ReadOnlySpan<float> w)
    {
        int n = w.Length, i = 0;
        float sum = 0;
        ref float wr = ref MemoryMarshal.GetReference(w);
        if (simd && (first & 7) == 0 && n >= 8)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                acc0 = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref wr, (nuint)i), acc0);
                acc1 = Fma.MultiplyAdd(R.Load8(ref codes, first + i + 8), Vector256.LoadUnsafe(ref wr, (nuint)(i + 8)), acc1);
            }
            for (; i + 8 <= n; i += 8)
                acc0 = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref wr, (nuint)i), acc0);
            sum = Vector256.Sum(Avx.Add(acc0, acc1));
        }
        for (; i < n; i++) sum += Unsafe.Add(ref wr, i) * R.Load1(ref codes, first + i);
        return sum;
    }

    /// <summary>dst[i] = x[first + i] (widens stored parameters; first must be a multiple of 8 for the vector path).</summary>
    public static void Widen(bool simd, ref byte codes, int first, Span<float> dst)
    {
        int n = dst.Length, i = 0;
        ref float dr = ref MemoryMarshal.GetReference(dst);
        if (simd && (first & 7) == 0)
            for (; i + 8 <= n; i += 8) R.Load8(ref codes, first + i).StoreUnsafe(ref dr, (nuint)i);
        for (; i < n; i++) Unsafe.Add(ref dr, i) = R.Load1(ref codes, first + i);
    }

    /// <summary>acc[i] += a · x[first + i] + b.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Axpy(bool simd, ref byte codes, int first, float a, float b, Span<float> acc)
    {
        int n = acc.Length, i = 0;
        ref float ar = ref MemoryMarshal.GetReference(acc);
        if (simd && (first & 7) == 0)
        {
            var va = Vector256.Create(a);
            var vb = Vector256.Create(b);
            for (; i + 8 <= n; i += 8)
            {
                var y = Avx.Add(Vector256.LoadUnsafe(ref ar, (nuint)i), vb);
                Fma.MultiplyAdd(R.Load8(ref codes, first + i), va, y).StoreUnsafe(ref ar, (nuint)i);
            }
        }
        for (; i < n; i++) Unsafe.Add(ref ar, i) += a * R.Load1(ref codes, first + i) + b;
    }

    /// <summary>acc[i] += w · (min[i] + step[i] · x[first + i]) (per-channel parameters).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyAffine(bool simd, ref byte codes, int first, float w, ReadOnlySpan<float> min, ReadOnlySpan<float> step, Span<float> acc)
    {
        int n = acc.Length, i = 0;
        ref float ar = ref MemoryMarshal.GetReference(acc);
        ref float mr = ref MemoryMarshal.GetReference(min);
        ref float sr = ref MemoryMarshal.GetReference(step);
        if (simd && (first & 7) == 0)
        {
            var vw = Vector256.Create(w);
            for (; i + 8 <= n; i += 8)
            {
                var v = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref sr, (nuint)i), Vector256.LoadUnsafe(ref mr, (nuint)i));
                Fma.MultiplyAdd(v, vw, Vector256.LoadUnsafe(ref ar, (nuint)i)).StoreUnsafe(ref ar, (nuint)i);
            }
        }
        for (; i < n; i++) Unsafe.Add(ref ar, i) += w * (Unsafe.Add(ref mr, i) + Unsafe.Add(ref sr, i) * R.Load1(ref codes, first + i));
    }
}

/// <summary>
/// Four consecutive token rows at once (rows first, first + stride, ...): the weight vector or accumulator is
/// loaded once per 8 channels for four rows, and four dot products share one horizontal reduction.
/// </summary>
internal static class RowKernels4<R> where R : struct, IElementReader
{
    /// <summary>result[k] = Σ_i w[i] · x[first + k·stride + i], k &lt; 4.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Dot(bool simd, ref byte codes, int first, int stride, ReadOnlySpan<float> w)
    {
        int n = w.Length;
        if (!simd || ((first | stride | n) & 7) != 0)
            return Vector128.Create(
                RowKernels<R>.Dot(simd, ref codes, first, w), RowKernels<R>.Dot(simd, ref codes, first + stride, w),
                RowKernels<R>.Dot(simd, ref codes, first + 2 * stride, w), RowKernels<R>.Dot(simd, ref codes, first + 3 * stride, w));
        ref float wr = ref MemoryMarshal.GetReference(w);
        var a0 = Vector256<float>.Zero;
        var a1 = Vector256<float>.Zero;
        var a2 = Vector256<float>.Zero;
        var a3 = Vector256<float>.Zero;
        for (int i = 0; i < n; i += 8)
        {
            var wv = Vector256.LoadUnsafe(ref wr, (nuint)i);
            a0 = Fma.MultiplyAdd(R.Load8(ref codes, first + i), wv, a0);
            a1 = Fma.MultiplyAdd(R.Load8(ref codes, first + stride + i), wv, a1);
            a2 = Fma.MultiplyAdd(R.Load8(ref codes, first + 2 * stride + i), wv, a2);
            a3 = Fma.MultiplyAdd(R.Load8(ref codes, first + 3 * stride + i), wv, a3);
        }
        // hadd pairs twice: lane k of each 128-bit half then holds half of row k's sum.
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
        return Sse.Add(h.GetLower(), h.GetUpper());
    }

    /// <summary>acc[i] += Σ_k a[k] · x[first + k·stride + i] + b, k &lt; 4.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Axpy(bool simd, ref byte codes, int first, int stride, Vector128<float> a, float b, Span<float> acc)
    {
        int n = acc.Length;
        if (!simd || ((first | stride | n) & 7) != 0)
        {
            RowKernels<R>.Axpy(simd, ref codes, first, a[0], b, acc);
            RowKernels<R>.Axpy(simd, ref codes, first + stride, a[1], 0f, acc);
            RowKernels<R>.Axpy(simd, ref codes, first + 2 * stride, a[2], 0f, acc);
            RowKernels<R>.Axpy(simd, ref codes, first + 3 * stride, a[3], 0f, acc);
            return;
        }
        ref float ar = ref MemoryMarshal.GetReference(acc);
        var a0 = Vector256.Create(a[0]);
        var a1 = Vector256.Create(a[1]);
        var a2 = Vector256.Create(a[2]);
        var a3 = Vector256.Create(a[3]);
        var vb = Vector256.Create(b);
        for (int i = 0; i < n; i += 8)
        {
            var y = Avx.Add(Vector256.LoadUnsafe(ref ar, (nuint)i), vb);
            y = Fma.MultiplyAdd(R.Load8(ref codes, first + i), a0, y);
            y = Fma.MultiplyAdd(R.Load8(ref codes, first + stride + i), a1, y);
            y = Fma.MultiplyAdd(R.Load8(ref codes, first + 2 * stride + i), a2, y);
            Fma.MultiplyAdd(R.Load8(ref codes, first + 3 * stride + i), a3, y).StoreUnsafe(ref ar, (nuint)i);
        }
    }

    /// <summary>acc[i] += (Σ_k w[k]) · min[i] + step[i] · Σ_k w[k] · x[first + k·stride + i], k &lt; 4 (per-channel parameters).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyAffine(bool simd, ref byte codes, int first, int stride, Vector128<float> w, ReadOnlySpan<float> min, ReadOnlySpan<float> step, Span<float> acc)
    {
        int n = acc.Length;
        if (!simd || ((first | stride | n) & 7) != 0)
        {
            for (int k = 0; k < 4; k++) RowKernels<R>.AxpyAffine(simd, ref codes, first + k * stride, w[k], min, step, acc);
            return;
        }
        ref float ar = ref MemoryMarshal.GetReference(acc);
        ref float mr = ref MemoryMarshal.GetReference(min);
        ref float sr = ref MemoryMarshal.GetReference(step);
        var w0 = Vector256.Create(w[0]);
        var w1 = Vector256.Create(w[1]);
        var w2 = Vector256.Create(w[2]);
        var w3 = Vector256.Create(w[3]);
        var total = Vector256.Create(Vector128.Sum(w));
        for (int i = 0; i < n; i += 8)
        {
            var x = Avx.Multiply(R.Load8(ref codes, first + i), w0);
            x = Fma.MultiplyAdd(R.Load8(ref codes, first + stride + i), w1, x);
            x = Fma.MultiplyAdd(R.Load8(ref codes, first + 2 * stride + i), w2, x);
            x = Fma.MultiplyAdd(R.Load8(ref codes, first + 3 * stride + i), w3, x);
            var y = Fma.MultiplyAdd(Vector256.LoadUnsafe(ref mr, (nuint)i), total, Vector256.LoadUnsafe(ref ar, (nuint)i));
            Fma.MultiplyAdd(x, Vector256.LoadUnsafe(ref sr, (nuint)i), y).StoreUnsafe(ref ar, (nuint)i);
        }
    }
}
