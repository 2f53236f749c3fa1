using System.Runtime.Intrinsics;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Dot products summed in the order of ggml's AVX2 CPU kernels (llama.cpp c0c7e147), so every rounding is theirs. Each
/// 8-lane accumulator is its own FMA chain, so <see cref="Vector256"/> FMA gives exactly the lanes' roundings on any
/// hardware (software FMA is still fused).
/// </summary>
public static class GgmlOrderDot
{
    /// <summary>
    /// <c>ggml_vec_dot_f32</c>: four 8-lane FMA accumulators over blocks of 32, reduced (0+2, 1+3, then 0+1, then the two
    /// 128-bit halves and two horizontal adds), then the tail added one unfused float product at a time.
    /// </summary>
    public static float VecDotF32(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        int n = x.Length, blocks = n & ~31;
        float sum = Blocks32(x, y, blocks);
        for (int i = blocks; i < n; i++) sum += x[i] * y[i];
        return sum;
    }

    /// <summary>
    /// <c>ggml_vec_dot_f16</c> on f16 values given widened to float (exact): the blocks of 32 as <see cref="VecDotF32"/>
    /// (the f16 products are exact in float), but the sum kept in double and the tail's products added in double.
    /// </summary>
    public static float VecDotF16(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        int n = x.Length, blocks = n & ~31;
        double sum = Blocks32(x, y, blocks);
        for (int i = blocks; i < n; i++) sum += x[i] * y[i];
        return (float)sum;
    }

    /// <summary>
    /// One output of llamafile's tinyBLAS kernel (AVX2, 8 lanes; the inner size must be a multiple of 8): lane t
    /// accumulates the products of columns ≡ t (mod 8) with FMA, then the high half is added to the low half and the four
    /// sums are added (0+2) + (1+3).
    /// </summary>
    public static float TinyBlas(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length % 8 != 0 || b.Length < a.Length)
            throw new ArgumentException($"tinyBLAS needs an inner size that is a multiple of 8, not {a.Length}", nameof(a));
        Vector256<float> lane = default;
        for (int l = 0; l < a.Length; l += 8)
            lane = Vector256.FusedMultiplyAdd(Vector256.Create(a.Slice(l, 8)), Vector256.Create(b.Slice(l, 8)), lane);
        return Hsum(lane);
    }

    /// <summary>
    /// <see cref="TinyBlas"/> for 4 weight rows × 3 activation rows at once (as tinyBLAS tiles its outputs): twelve
    /// independent FMA chains, each in exactly <see cref="TinyBlas"/>'s order, so the results are the same bits while the
    /// FMA latency is hidden. Row i of the weights is at <paramref name="w"/> + i · <paramref name="ws"/>, activation row j
    /// at <paramref name="x"/> + j · <paramref name="xs"/>; output (j, i) goes to <paramref name="y"/>[j · ys + i].
    /// </summary>
    internal static unsafe void TinyBlas4x3(float* w, long ws, float* x, long xs, int cols, float* y, long ys)
    {
        Vector256<float> c00 = default, c01 = default, c02 = default, c10 = default, c11 = default, c12 = default;
        Vector256<float> c20 = default, c21 = default, c22 = default, c30 = default, c31 = default, c32 = default;
        float* w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws, x1 = x + xs, x2 = x + 2 * xs;
        for (int l = 0; l < cols; l += 8)
        {
            var b0 = Vector256.Load(x + l);
            var b1 = Vector256.Load(x1 + l);
            var b2 = Vector256.Load(x2 + l);
            var a = Vector256.Load(w + l);
            c00 = Vector256.FusedMultiplyAdd(a, b0, c00); c01 = Vector256.FusedMultiplyAdd(a, b1, c01); c02 = Vector256.FusedMultiplyAdd(a, b2, c02);
            a = Vector256.Load(w1 + l);
            c10 = Vector256.FusedMultiplyAdd(a, b0, c10); c11 = Vector256.FusedMultiplyAdd(a, b1, c11); c12 = Vector256.FusedMultiplyAdd(a, b2, c12);
            a = Vector256.Load(w2 + l);
            c20 = Vector256.FusedMultiplyAdd(a, b0, c20); c21 = Vector256.FusedMultiplyAdd(a, b1, c21); c22 = Vector256.FusedMultiplyAdd(a, b2, c22);
            a = Vector256.Load(w3 + l);
            c30 = Vector256.FusedMultiplyAdd(a, b0, c30); c31 = Vector256.FusedMultiplyAdd(a, b1, c31); c32 = Vector256.FusedMultiplyAdd(a, b2, c32);
        }
        y[0] = Hsum(c00); y[1] = Hsum(c10); y[2] = Hsum(c20); y[3] = Hsum(c30);
        y[ys] = Hsum(c01); y[ys + 1] = Hsum(c11); y[ys + 2] = Hsum(c21); y[ys + 3] = Hsum(c31);
        y[2 * ys] = Hsum(c02); y[2 * ys + 1] = Hsum(c12); y[2 * ys + 2] = Hsum(c22); y[2 * ys + 3] = Hsum(c32);
    }

    // tinyBLAS's hsum: high half onto low half, then (0+2) + (1+3).
    private static float Hsum(Vector256<float> lane)
    {
        var h = lane.GetUpper() + lane.GetLower();
        return (h[0] + h[2]) + (h[1] + h[3]);
    }

    private static float Blocks32(ReadOnlySpan<float> x, ReadOnlySpan<float> y, int blocks)
    {
        if (blocks == 0) return 0;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int i = 0; i < blocks; i += 32)
        {
            a0 = Vector256.FusedMultiplyAdd(Vector256.Create(x.Slice(i, 8)), Vector256.Create(y.Slice(i, 8)), a0);
            a1 = Vector256.FusedMultiplyAdd(Vector256.Create(x.Slice(i + 8, 8)), Vector256.Create(y.Slice(i + 8, 8)), a1);
            a2 = Vector256.FusedMultiplyAdd(Vector256.Create(x.Slice(i + 16, 8)), Vector256.Create(y.Slice(i + 16, 8)), a2);
            a3 = Vector256.FusedMultiplyAdd(Vector256.Create(x.Slice(i + 24, 8)), Vector256.Create(y.Slice(i + 24, 8)), a3);
        }
        var r = (a0 + a2) + (a1 + a3);
        var h = r.GetLower() + r.GetUpper();
        return (h[0] + h[1]) + (h[2] + h[3]);
    }
}
