using System.Numerics.Tensors;
using KvSharp.Formats;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Weight-times-activation products with ggml's CPU kernel choice and summation order (<see cref="CpuNumerics.LlamaCpp"/>):
/// a batch of one goes through ggml_vec_dot; a batch of several through llamafile's tinyBLAS when the inner size is a
/// multiple of 8, else ggml_vec_dot. F16 weights take ggml's F16 route (the activations rounded to f16 first, the vec_dot
/// sum in double). Other weight types have no ggml-order kernel here and use the engine's (<see cref="Kernels.MatMul"/>).
/// </summary>
public static unsafe class GgmlMatMul
{
    /// <summary>Whether products with <paramref name="type"/> weights follow ggml's arithmetic exactly.</summary>
    public static bool IsExact(GgmlType type) => type is GgmlType.F32 or GgmlType.F16;

    /// <summary>y[t, r] = dot(x[t, :], W[r, :]) for t in [0, n), in ggml's order (see the class remarks).</summary>
    public static void Multiply(TensorView w, ReadOnlySpan<float> x, Span<float> y, int n)
    {
        ArgumentNullException.ThrowIfNull(w);
        if (!IsExact(w.Type))
        {
            Kernels.MatMul(w, x, y, n);
            return;
        }
        int rows = checked((int)w.Rows), cols = checked((int)w.Cols);
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), $"batch size {n} must be positive");
        if (x.Length < (long)n * cols)
            throw new ArgumentException($"activations hold {x.Length} values, {n} rows of {cols} needed for {w.Name}", nameof(x));
        if (y.Length < (long)n * rows)
            throw new ArgumentException($"output holds {y.Length} values, {n} rows of {rows} needed for {w.Name}", nameof(y));

        bool f16 = w.Type == GgmlType.F16;
        // ggml converts the activations to the weights' vec_dot type (F16 for F16 weights) before the product.
        float[]? rounded = null;
        if (f16)
        {
            rounded = new float[n * cols];
            GgmlElementwise.RoundToHalf(x[..(n * cols)], rounded);
        }
        bool tiny = n > 1 && cols % 8 == 0;
        fixed (float* xf = x)
        fixed (float* yf = y)
        fixed (float* rf = rounded)
        {
            float* xp = f16 ? rf : xf, yp = yf;
            byte* wp = w.Data;
            // Rows split over the pool; each output is one dot product, so the split does not change any rounding.
            CpuThreads.For(rows, Math.Max(1, 16384 / Math.Max(1, cols * n)), (r0, r1) =>
            {
                Span<float> widened = f16 ? new float[4 * cols] : default;
                int r = r0;
                if (tiny)
                {
                    // Prefill: 4 weight rows × 3 activation rows per pass, each output in tinyBLAS's order.
                    fixed (float* wide = widened)
                        for (; r + 4 <= r1; r += 4)
                        {
                            float* wr4 = (float*)(wp + (long)r * cols * 4);
                            if (f16)
                            {
                                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(wp + (long)r * cols * 2, 4 * cols), widened);
                                wr4 = wide;
                            }
                            int t = 0;
                            for (; t + 3 <= n; t += 3)
                                GgmlOrderDot.TinyBlas4x3(wr4, cols, xp + (long)t * cols, cols, cols, yp + (long)t * rows + r, rows);
                            for (; t < n; t++)
                                for (int k = 0; k < 4; k++)
                                    yp[(long)t * rows + r + k] = GgmlOrderDot.TinyBlas(new ReadOnlySpan<float>(wr4 + (long)k * cols, cols), new ReadOnlySpan<float>(xp + (long)t * cols, cols));
                        }
                }
                for (; r < r1; r++)
                {
                    ReadOnlySpan<float> wr;
                    if (f16)
                    {
                        TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(wp + (long)r * cols * 2, cols), widened[..cols]);
                        wr = widened[..cols];
                    }
                    else wr = new ReadOnlySpan<float>(wp + (long)r * cols * 4, cols);
                    for (int t = 0; t < n; t++)
                    {
                        var xt = new ReadOnlySpan<float>(xp + (long)t * cols, cols);
                        yp[(long)t * rows + r] = tiny ? GgmlOrderDot.TinyBlas(wr, xt)
                            : f16 ? GgmlOrderDot.VecDotF16(wr, xt) : GgmlOrderDot.VecDotF32(wr, xt);
                    }
                }
            });
        }
    }
}
