using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// Value accumulation over a run of token rows with the accumulators held in registers for the whole run:
/// for each channel c, y = acc_c, then y = fma(x_tc, coef_t, y) for the tokens t in order, then acc_c = y. Each
/// accumulator is loaded and stored once per block instead of once per token, and a widened 8-element chunk of a
/// row feeds four queries (<see cref="Accumulate4"/>), so the loop is one widening per 8 elements and one FMA per
/// (query, 8 elements): what bounds it is the FMA rate, not loads, stores or broadcasts.
/// </summary>
/// <remarks>
/// <see cref="Accumulate4"/>, <see cref="Accumulate1"/> and the scalar fallback perform per (query, channel) exactly
/// the same fused multiply-adds in the same order, so a query's result does not depend on how queries are grouped.
/// </remarks>
internal static class ValueKernels<R> where R : struct, IElementReader
{
    /// <summary>
    /// Four queries: for k &lt; 4 and c &lt; <paramref name="width"/>,
    /// acc[k·accStride + c] = fma(x[first + (n−1)·stride + c], coef[4(n−1) + k], … fma(x[first + c], coef[k], acc[k·accStride + c])).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Accumulate4(bool simd, ref byte codes, int first, int stride, int n, ReadOnlySpan<float> coef, Span<float> acc, int accStride, int width)
    {
        if (n == 0) return;
        _ = coef[4 * n - 1];
        _ = acc[3 * accStride + width - 1];
        ref float cr = ref MemoryMarshal.GetReference(coef);
        ref float ar = ref MemoryMarshal.GetReference(acc);
        int c = 0;
        if (simd && ((first | stride | width) & 7) == 0)
        {
            for (; c + 16 <= width; c += 16)
            {
                ref float r0 = ref Unsafe.Add(ref ar, c);
                ref float r1 = ref Unsafe.Add(ref r0, accStride);
                ref float r2 = ref Unsafe.Add(ref r1, accStride);
                ref float r3 = ref Unsafe.Add(ref r2, accStride);
                Vector256<float> y00 = Vector256.LoadUnsafe(ref r0), y01 = Vector256.LoadUnsafe(ref r0, 8);
                Vector256<float> y10 = Vector256.LoadUnsafe(ref r1), y11 = Vector256.LoadUnsafe(ref r1, 8);
                Vector256<float> y20 = Vector256.LoadUnsafe(ref r2), y21 = Vector256.LoadUnsafe(ref r2, 8);
                Vector256<float> y30 = Vector256.LoadUnsafe(ref r3), y31 = Vector256.LoadUnsafe(ref r3, 8);
                int e = first + c;
                for (int t = 0; t < n; t++, e += stride)
                {
                    var x0 = R.Load8(ref codes, e);
                    var x1 = R.Load8(ref codes, e + 8);
                    ref float ct = ref Unsafe.Add(ref cr, 4 * t);
                    var w = Vector256.Create(ct);
                    y00 = Fma.MultiplyAdd(x0, w, y00); y01 = Fma.MultiplyAdd(x1, w, y01);
                    w = Vector256.Create(Unsafe.Add(ref ct, 1));
                    y10 = Fma.MultiplyAdd(x0, w, y10); y11 = Fma.MultiplyAdd(x1, w, y11);
                    w = Vector256.Create(Unsafe.Add(ref ct, 2));
                    y20 = Fma.MultiplyAdd(x0, w, y20); y21 = Fma.MultiplyAdd(x1, w, y21);
                    w = Vector256.Create(Unsafe.Add(ref ct, 3));
                    y30 = Fma.MultiplyAdd(x0, w, y30); y31 = Fma.MultiplyAdd(x1, w, y31);
                }
                y00.StoreUnsafe(ref r0); y01.StoreUnsafe(ref r0, 8);
                y10.StoreUnsafe(ref r1); y11.StoreUnsafe(ref r1, 8);
                y20.StoreUnsafe(ref r2); y21.StoreUnsafe(ref r2, 8);
                y30.StoreUnsafe(ref r3); y31.StoreUnsafe(ref r3, 8);
            }
            if (c < width)
            {
                ref float r0 = ref Unsafe.Add(ref ar, c);
                ref float r1 = ref Unsafe.Add(ref r0, accStride);
                ref float r2 = ref Unsafe.Add(ref r1, accStride);
                ref float r3 = ref Unsafe.Add(ref r2, accStride);
                Vector256<float> y0 = Vector256.LoadUnsafe(ref r0), y1 = Vector256.LoadUnsafe(ref r1);
                Vector256<float> y2 = Vector256.LoadUnsafe(ref r2), y3 = Vector256.LoadUnsafe(ref r3);
                int e = first + c;
                for (int t = 0; t < n; t++, e += stride)
                {
                    var x = R.Load8(ref codes, e);
                    ref float ct = ref Unsafe.Add(ref cr, 4 * t);
                    y0 = Fma.MultiplyAdd(x, Vector256.Create(ct), y0);
                    y1 = Fma.MultiplyAdd(x, Vector256.Create(Unsafe.Add(ref ct, 1)), y1);
                    y2 = Fma.MultiplyAdd(x, Vector256.Create(Unsafe.Add(ref ct, 2)), y2);
                    y3 = Fma.MultiplyAdd(x, Vector256.Create(Unsafe.Add(ref ct, 3)), y3);
                }
                y0.StoreUnsafe(ref r0); y1.StoreUnsafe(ref r1); y2.StoreUnsafe(ref r2); y3.StoreUnsafe(ref r3);
            }
            return;
        }
        for (int k = 0; k < 4; k++)
            Scalar(ref codes, first, stride, n, ref Unsafe.Add(ref cr, k), 4, ref Unsafe.Add(ref ar, k * accStride), width);
    }

    /// <summary>
    /// One query: for c &lt; acc.Length, acc[c] = fma(x[first + (n−1)·stride + c], coef[(n−1)·coefStride], … fma(x[first + c], coef[0], acc[c])).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Accumulate1(bool simd, ref byte codes, int first, int stride, int n, ReadOnlySpan<float> coef, int coefStride, Span<float> acc)
    {
        if (n == 0) return;
        int width = acc.Length;
        _ = coef[(n - 1) * coefStride];
        ref float cr = ref MemoryMarshal.GetReference(coef);
        ref float ar = ref MemoryMarshal.GetReference(acc);
        int c = 0;
        if (simd && ((first | stride | width) & 7) == 0)
        {
            for (; c + 32 <= width; c += 32)
            {
                ref float r = ref Unsafe.Add(ref ar, c);
                Vector256<float> y0 = Vector256.LoadUnsafe(ref r), y1 = Vector256.LoadUnsafe(ref r, 8);
                Vector256<float> y2 = Vector256.LoadUnsafe(ref r, 16), y3 = Vector256.LoadUnsafe(ref r, 24);
                int e = first + c;
                for (int t = 0; t < n; t++, e += stride)
                {
                    var w = Vector256.Create(Unsafe.Add(ref cr, t * coefStride));
                    y0 = Fma.MultiplyAdd(R.Load8(ref codes, e), w, y0);
                    y1 = Fma.MultiplyAdd(R.Load8(ref codes, e + 8), w, y1);
                    y2 = Fma.MultiplyAdd(R.Load8(ref codes, e + 16), w, y2);
                    y3 = Fma.MultiplyAdd(R.Load8(ref codes, e + 24), w, y3);
                }
                y0.StoreUnsafe(ref r); y1.StoreUnsafe(ref r, 8); y2.StoreUnsafe(ref r, 16); y3.StoreUnsafe(ref r, 24);
            }
            for (; c < width; c += 8)
            {
                ref float r = ref Unsafe.Add(ref ar, c);
                var y = Vector256.LoadUnsafe(ref r);
                int e = first + c;
                for (int t = 0; t < n; t++, e += stride)
                    y = Fma.MultiplyAdd(R.Load8(ref codes, e), Vector256.Create(Unsafe.Add(ref cr, t * coefStride)), y);
                y.StoreUnsafe(ref r);
            }
            return;
        }
        Scalar(ref codes, first, stride, n, ref cr, coefStride, ref ar, width);
    }

    private static void Scalar(ref byte codes, int first, int stride, int n, ref float coef, int coefStride, ref float acc, int width)
    {
        for (int c = 0; c < width; c++)
        {
            float y = Unsafe.Add(ref acc, c);
            for (int t = 0; t < n; t++)
                y = MathF.FusedMultiplyAdd(R.Load1(ref codes, first + t * stride + c), Unsafe.Add(ref coef, t * coefStride), y);
            Unsafe.Add(ref acc, c) = y;
        }
    }
}
