using KvSharp.Formats;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// The CPU compute primitives the transformer is written against. Matrix products read weights
/// in their stored precision (dequantizing on the fly); activations are float32.
/// </summary>
public static class Kernels
{
    /// <summary>
    /// y[t, r] = sum_c x[t, c] * W[r, c] for t in [0, n): a batch of n activation rows times the
    /// transpose of weight <paramref name="w"/> ([rows, cols], any supported type).
    /// </summary>
    public static void MatMul(TensorView w, ReadOnlySpan<float> x, Span<float> y, int n)
        => MatMulCpu.Multiply(w, x, y, n);

    /// <summary>Copies row <paramref name="row"/> of <paramref name="w"/>, dequantized, into <paramref name="dst"/>.</summary>
    public static void GetRow(TensorView w, long row, Span<float> dst) => Dequantize.Row(w, row, dst);

    /// <summary>dst = x / rms(x) * weight, per row of <paramref name="weight"/>.Length elements.</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, Span<float> dst, float eps)
    {
        int d = weight.Length;
        for (int r = 0; r < x.Length / d; r++)
        {
            var xi = x.Slice(r * d, d);
            var yi = dst.Slice(r * d, d);
            float ss = System.Numerics.Tensors.TensorPrimitives.SumOfSquares(xi);
            float inv = 1f / MathF.Sqrt(ss / d + eps);
            System.Numerics.Tensors.TensorPrimitives.Multiply(xi, inv, yi);
            System.Numerics.Tensors.TensorPrimitives.Multiply(yi, weight, yi);
        }
    }

    /// <summary>gate = silu(gate) * up, elementwise.</summary>
    public static void SwiGlu(Span<float> gate, ReadOnlySpan<float> up)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            float g = gate[i];
            gate[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }

    /// <summary>x += y.</summary>
    public static void Add(Span<float> x, ReadOnlySpan<float> y) => System.Numerics.Tensors.TensorPrimitives.Add(x, y, x);
}
