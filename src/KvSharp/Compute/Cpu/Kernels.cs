using System.Numerics.Tensors;
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
            float ss = TensorPrimitives.SumOfSquares(xi);
            float inv = 1f / MathF.Sqrt(ss / d + eps);
            TensorPrimitives.Multiply(xi, inv, yi);
            TensorPrimitives.Multiply(yi, weight, yi);
        }
    }

    /// <summary>gate = silu(gate) * up = gate * sigmoid(gate) * up, elementwise (vectorized exp).</summary>
    public static void SwiGlu(Span<float> gate, ReadOnlySpan<float> up)
    {
        if (up.Length < gate.Length)
            throw new ArgumentException($"up has {up.Length} values, gate {gate.Length}", nameof(up));
        Span<float> sig = stackalloc float[512];
        for (int i = 0; i < gate.Length; i += sig.Length)
        {
            int len = Math.Min(sig.Length, gate.Length - i);
            var g = gate.Slice(i, len);
            var s = sig.Slice(0, len);
            TensorPrimitives.Sigmoid(g, s);
            TensorPrimitives.Multiply(g, s, g);
            TensorPrimitives.Multiply(g, up.Slice(i, len), g);
        }
    }

    /// <summary>x = softmax(x) in place, shifted by max(x) so large logits cannot overflow.</summary>
    public static void Softmax(Span<float> x)
    {
        if (x.IsEmpty) return;
        float max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, x);
        TensorPrimitives.Exp(x, x);
        float sum = TensorPrimitives.Sum(x);
        TensorPrimitives.Multiply(x, 1f / sum, x);
    }

    /// <summary>x += y.</summary>
    public static void Add(Span<float> x, ReadOnlySpan<float> y) => TensorPrimitives.Add(x, y, x);
}
