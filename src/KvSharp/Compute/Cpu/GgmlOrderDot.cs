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
