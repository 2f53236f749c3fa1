using KvSharp.Formats;

namespace KvSharp.Compute.Cpu;

/// <summary>Weight-times-activation products on the CPU.</summary>
internal static class MatMulCpu
{
    /// <summary>y[t, r] = dot(x[t, :], W[r, :]).</summary>
    public static void Multiply(TensorView w, ReadOnlySpan<float> x, Span<float> y, int n)
    {
        int rows = (int)w.Rows, cols = (int)w.Cols;
        var xa = x.Slice(0, n * cols).ToArray();
        var ya = new float[n * rows];
        Parallel.For(0, rows, () => new float[cols], (r, _, buf) =>
        {
            Dequantize.Row(w, r, buf);
            for (int t = 0; t < n; t++)
                ya[t * rows + r] = System.Numerics.Tensors.TensorPrimitives.Dot(new ReadOnlySpan<float>(xa, t * cols, cols), buf);
            return buf;
        }, _ => { });
        ya.CopyTo(y);
    }
}
