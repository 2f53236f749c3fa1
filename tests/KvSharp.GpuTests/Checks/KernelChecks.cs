using System.Runtime.InteropServices;
using static KvSharp.GpuTests.Checks.DeviceData;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// Each CUDA kernel against a float64 reference written here, on fresh random inputs, with the output
/// poisoned (NaN) before the launch so an element the kernel never writes fails the comparison.
/// </summary>
public static class KernelChecks
{
    private static readonly Lazy<CudaKernels> SharedKernels = new(() => new CudaKernels(CudaDevice.Shared));

    private static CudaKernels K
    {
        get
        {
            CudaDevice.Shared.MakeCurrent();
            return SharedKernels.Value;
        }
    }

    private static CudaDevice Dev => CudaDevice.Shared;


    /// <summary>RMSNorm over rows of a width that is not a multiple of the block.</summary>
    public static string RmsNorm()
    {
        var rnd = new RandomData();
        int rows = 5, cols = 1000;
        float eps = 1e-5f;
        var x = rnd.Floats(rows * cols, 3f);
        var w = rnd.Floats(cols, 2f);
        using var dx = Upload(x);
        using var dw = Upload(w);
        using var dy = Poisoned(rows * cols * 4L);
        K.RmsNorm(dx.Pointer, dw.Pointer, dy.Pointer, rows, cols, eps);
        var expected = new double[rows * cols];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < cols; i++) ss += (double)x[r * cols + i] * x[r * cols + i];
            double inv = 1 / Math.Sqrt(ss / cols + eps);
            for (int i = 0; i < cols; i++) expected[r * cols + i] = x[r * cols + i] * inv * w[i];
        }
        return Compare.Relative($"rmsnorm (seed {rnd.Seed})", Result(dy, rows * cols), expected, 1e-6);
    }

    /// <summary>
    /// The step after the fused QKV product: optional per-head q/k RMSNorm, RoPE in both pairings with Llama-3
    /// frequency scaling at positions read from the device, queries out, keys and values into the float16 cache.
    /// </summary>
    public static string QkvRopeAppend()
    {
        var report = new List<string>();
        foreach (bool interleaved in new[] { false, true })
            foreach (bool qkNorm in new[] { false, true })
            {
                var rnd = new RandomData();
                int n = 3, heads = 6, kvHeads = 2, hd = 64, capacity = 2100, pos0 = 37 + rnd.Next(2000);
                double theta = 500000, factor = 8, low = 1, high = 4, original = 8192, eps = 1e-6;
                var invFreq = new double[hd / 2];
                for (int i = 0; i < hd / 2; i++)
                {
                    // Llama-3 scaling, written out independently: long wavelengths divided by the factor, short ones kept,
                    // a linear blend (in 1/wavelength) between.
                    double f = Math.Pow(theta, -2.0 * i / hd), wavelength = 2 * Math.PI / f;
                    if (wavelength > original / low) f /= factor;
                    else if (wavelength >= original / high)
                    {
                        double s = (original / wavelength - low) / (high - low);
                        f = (1 - s) * f / factor + s * f;
                    }
                    invFreq[i] = f;
                }
                int stride = (heads + 2 * kvHeads) * hd;
                var qkv = rnd.Floats(n * stride, 2f);
                var qNorm = rnd.Floats(hd, 2f);
                var kNorm = rnd.Floats(hd, 2f);
                using var dqkv = Upload(qkv);
                using var df = Upload(invFreq.Select(f => (float)f).ToArray());
                using var dpos = Upload(new[] { pos0 });
                using var dqn = Upload(qNorm);
                using var dkn = Upload(kNorm);
                using var dq = Poisoned(n * heads * hd * 4L);
                using var kc = Poisoned(kvHeads * capacity * hd * 2L);
                using var vc = Poisoned(kvHeads * capacity * hd * 2L);
                K.QkvRopeAppend(dqkv.Pointer, dq.Pointer, qkNorm ? dqn.Pointer : Arg.Null, qkNorm ? dkn.Pointer : Arg.Null, df.Pointer,
                    kc.Pointer, vc.Pointer, n, heads, kvHeads, hd, capacity, dpos.Pointer, interleaved, (float)eps);

                double[] Rotated(int t, int offset, float[] norm)
                {
                    var x = new double[hd];
                    double ss = 0;
                    for (int d = 0; d < hd; d++) ss += (double)qkv[t * stride + offset + d] * qkv[t * stride + offset + d];
                    double inv = qkNorm ? 1 / Math.Sqrt(ss / hd + eps) : 1;
                    for (int d = 0; d < hd; d++) x[d] = qkv[t * stride + offset + d] * inv * (qkNorm ? norm[d] : 1);
                    var y = new double[hd];
                    for (int i = 0; i < hd / 2; i++)
                    {
                        int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + hd / 2;
                        double a = (pos0 + t) * (double)(float)invFreq[i]; // the device's frequencies are float32
                        y[i0] = x[i0] * Math.Cos(a) - x[i1] * Math.Sin(a);
                        y[i1] = x[i0] * Math.Sin(a) + x[i1] * Math.Cos(a);
                    }
                    return y;
                }
                var expQ = new double[n * heads * hd];
                var expK = new double[n * kvHeads * hd];
                var gotK = new float[n * kvHeads * hd];
                var gotV = new float[n * kvHeads * hd];
                var expV = new float[n * kvHeads * hd];
                Dev.Synchronize();
                var kHost = new Half[kvHeads * capacity * hd];
                var vHost = new Half[kvHeads * capacity * hd];
                kc.Download<Half>(kHost);
                vc.Download<Half>(vHost);
                for (int t = 0; t < n; t++)
                {
                    for (int h = 0; h < heads; h++) Rotated(t, h * hd, qNorm).CopyTo(expQ, (t * heads + h) * hd);
                    for (int h = 0; h < kvHeads; h++)
                    {
                        Rotated(t, (heads + h) * hd, kNorm).CopyTo(expK, (t * kvHeads + h) * hd);
                        for (int d = 0; d < hd; d++)
                        {
                            int cacheIndex = (h * capacity + pos0 + t) * hd + d, i = (t * kvHeads + h) * hd + d;
                            gotK[i] = (float)kHost[cacheIndex];
                            gotV[i] = (float)vHost[cacheIndex];
                            expV[i] = (float)(Half)qkv[t * stride + (heads + kvHeads + h) * hd + d];
                        }
                    }
                }
                string what = $"{(interleaved ? "interleaved" : "half-split")}{(qkNorm ? "+qk-norm" : "")} pos {pos0} (seed {rnd.Seed})";
                // float32 angles at positions of a few thousand carry ~1e-4 rad of rounding; keys are then rounded to float16.
                report.Add(Compare.Relative($"q {what}", Result(dq, n * heads * hd), expQ, 5e-4));
                report.Add(Compare.Relative($"k(f16) {what}", gotK, expK, 1e-3));
                report.Add(Compare.Exact($"v(f16) {what}", gotV, expV));
            }
        return string.Join("; ", report);
    }

    /// <summary>SwiGLU over fused gate/up rows and the bias add, over lengths that do not fill the last block.</summary>
    public static string Elementwise()
    {
        var rnd = new RandomData();
        int rows = 7, ffn = 1003, cols = 131, n = 10007;
        var gu = rnd.Floats(rows * 2 * ffn, 6f);
        using var dgu = Upload(gu);
        using var dout = Poisoned((long)rows * ffn * 4);
        K.SwiGluRows(dgu.Pointer, dout.Pointer, ffn, rows);
        var expSwiglu = new double[rows * ffn];
        for (int t = 0; t < rows; t++)
            for (int i = 0; i < ffn; i++)
            {
                double g = gu[t * 2 * ffn + i];
                expSwiglu[t * ffn + i] = g / (1 + Math.Exp(-g)) * gu[t * 2 * ffn + ffn + i];
            }
        string a = Compare.Relative("swiglu rows", Result(dout, rows * ffn), expSwiglu, 1e-6);

        var x = rnd.Floats(n);
        var bias = rnd.Floats(cols);
        using var dx = Upload(x);
        using var db = Upload(bias);
        K.AddBias(dx.Pointer, db.Pointer, cols, n);
        var expAdd = new double[n];
        for (int i = 0; i < n; i++) expAdd[i] = (double)x[i] + bias[i % cols];
        return a + "; " + Compare.Relative($"bias add (seed {rnd.Seed})", Result(dx, n), expAdd, 1e-6);
    }

    /// <summary>Embedding rows gathered from tables of each weight type (exact widening).</summary>
    public static string Embedding()
    {
        var rnd = new RandomData();
        int vocab = 300, cols = 72, n = 9;
        var table = rnd.Floats(vocab * cols);
        var tokens = Enumerable.Range(0, n).Select(_ => rnd.Next(vocab)).ToArray();
        using var dtok = Upload(tokens);
        var report = new List<string>();
        foreach (var type in new[] { DeviceWeightType.F32, DeviceWeightType.BF16, DeviceWeightType.F16 })
        {
            float[] widened;
            DeviceBuffer dt;
            switch (type)
            {
                case DeviceWeightType.BF16:
                    var b = RandomData.ToBFloat16(table);
                    widened = b.Select(v => (float)RandomData.BFloat16ToDouble(v)).ToArray();
                    dt = Upload(b);
                    break;
                case DeviceWeightType.F16:
                    var h = RandomData.ToHalf(table);
                    widened = h.Select(v => (float)v).ToArray();
                    dt = Upload(h);
                    break;
                default:
                    widened = table;
                    dt = Upload(table);
                    break;
            }
            using (dt)
            {
                using var dout = Poisoned(n * cols * 4L);
                K.Embed(type, dt.Pointer, dtok.Pointer, dout.Pointer, n, cols);
                var expected = new float[n * cols];
                for (int t = 0; t < n; t++) Array.Copy(widened, tokens[t] * cols, expected, t * cols, cols);
                report.Add(Compare.Exact($"embed {type}", Result(dout, n * cols), expected));
            }
        }
        return string.Join("; ", report);
    }

    /// <summary>
    /// Matrix-vector kernels: each weight type, 1-8 rows, vectorized (cols % 8 == 0) and scalar widths, an odd
    /// row count (two rows per warp; a partial last tile of the tensor-core kernel), the accumulate and SwiGLU epilogues,
    /// and the fused RMSNorm of the input. The tensor-core kernel's warps take 4 steps of 32 columns at 1024 columns (one
    /// group of the normed products' 4-step load ring), 9 at 2304 (groups and a remainder), 3 at 768 (the remainder
    /// alone) and 6 at 1536 (one group of the 6-step ring of the products without a norm); each of its cases also with a
    /// grid of 4 blocks (several row tiles a block: where the steps are a multiple of the ring, at 1024 columns for the
    /// normed products and 1536 for the others, the ring runs on into the next tile).
    /// One row of 8448 columns: the normed one-row products stage their activations 4096 columns at a time (gemv.cuh's
    /// GEMV_STAGE), here two full stages and a part.
    /// </summary>
    public static string Gemv()
    {
        var report = new List<string>();
        foreach (var type in new[] { DeviceWeightType.BF16, DeviceWeightType.F16, DeviceWeightType.F32 })
            foreach (int cols in new[] { 1024, 2304, 768, 1536, 172, 8448 })
                foreach (int n in cols > 4096 ? [1] : new[] { 1, 2, 3, 4, 5, 6, 7, 8 })
                    foreach (var (mode, normed) in new[] { (CudaKernels.GemvMode.Store, false), (CudaKernels.GemvMode.Accumulate, false),
                        (CudaKernels.GemvMode.SwiGlu, false), (CudaKernels.GemvMode.Store, true), (CudaKernels.GemvMode.SwiGlu, true) })
                    {
                        var rnd = new RandomData();
                        int rows = 333; // odd: the last warp has one row
                        int matrixRows = mode == CudaKernels.GemvMode.SwiGlu ? 2 * rows : rows;
                        var (dw, weights) = Weights(type, rnd.Floats(matrixRows * cols));
                        using var _ = dw;
                        var x = rnd.Floats(n * cols, 3f);
                        var y0 = rnd.Floats(n * rows);
                        var norm = rnd.Floats(cols, 2f);
                        const float eps = 1e-5f;
                        using var dx = Upload(x);
                        using var dnorm = Upload(norm);
                        bool tensorCores = n > 1 && type != DeviceWeightType.F32 && cols % CudaKernels.TensorCoreGemvColumns == 0;
                        var (xr, inv) = ReferenceActivations(x, normed ? norm : null, n, cols, eps, tensorCores ? type : null);
                        var products = Reference(weights, xr, matrixRows, cols, n);
                        if (tensorCores)
                            for (int t = 0; t < n; t++)
                                for (int r = 0; r < matrixRows; r++) products[t * matrixRows + r] *= inv[t];
                        var expected = new double[n * rows];
                        for (int t = 0; t < n; t++)
                            for (int r = 0; r < rows; r++)
                            {
                                expected[t * rows + r] = mode switch
                                {
                                    CudaKernels.GemvMode.Accumulate => y0[t * rows + r] + products[t * rows + r],
                                    CudaKernels.GemvMode.SwiGlu => Silu(products[t * matrixRows + r]) * products[t * matrixRows + rows + r],
                                    _ => products[t * rows + r],
                                };
                            }
                        foreach (int? wave in tensorCores ? new int?[] { null, 4 } : [null])
                        {
                            using var dy = mode == CudaKernels.GemvMode.Accumulate ? Upload(y0) : Poisoned((long)n * rows * 4);
                            UnderGemvWave(wave, () => K.Gemv(type, dw.Pointer, dx.Pointer, dy.Pointer, rows, cols, n, mode, normed ? dnorm.Pointer : 0, eps));
                            report.Add(Compare.Relative($"gemv{(tensorCores ? " mma" : "")}{(wave != null ? $" {wave} blocks" : "")} {type} {mode}{(normed ? "+norm" : "")} {n}x{cols}",
                                Result(dy, n * rows), expected, 1e-5));
                        }
                    }
        return string.Join("; ", report);
    }

    /// <summary>
    /// The tensor-core products at shapes of several waves, on the device's own grid plan (CudaKernels.Gemv: at most one
    /// wave of blocks, each taking an equal share of the row tiles): Llama-3.1-8B's gate/up rows (1792 tiles of 8 pairs; at
    /// 1024 columns a warp's 4 steps are one group of the ring, which runs on into the next tile) and its output head's rows
    /// (8016 tiles of 16; at 256 columns one step, the ring reloaded a tile), 8 activation rows, the norm fused.
    /// </summary>
    public static string GemvMmaWaves()
    {
        var report = new List<string>();
        foreach (var (mode, rows, cols) in new[] { (CudaKernels.GemvMode.SwiGlu, 14336, 1024), (CudaKernels.GemvMode.Store, 128256, 256) })
        {
            const int n = 8;
            const float eps = 1e-5f;
            var rnd = new RandomData();
            int matrixRows = mode == CudaKernels.GemvMode.SwiGlu ? 2 * rows : rows;
            var (dw, weights) = Weights(DeviceWeightType.BF16, rnd.Floats(matrixRows * cols));
            using var _ = dw;
            var x = rnd.Floats(n * cols, 3f);
            var norm = rnd.Floats(cols, 2f);
            using var dx = Upload(x);
            using var dnorm = Upload(norm);
            using var dy = Poisoned((long)n * rows * 4);
            K.Gemv(DeviceWeightType.BF16, dw.Pointer, dx.Pointer, dy.Pointer, rows, cols, n, mode, dnorm.Pointer, eps);
            var (xr, inv) = ReferenceActivations(x, norm, n, cols, eps, DeviceWeightType.BF16);
            var products = Reference(weights, xr, matrixRows, cols, n);
            var expected = new double[n * rows];
            for (int t = 0; t < n; t++)
                for (int r = 0; r < rows; r++)
                    expected[t * rows + r] = mode == CudaKernels.GemvMode.SwiGlu
                        ? Silu(products[t * matrixRows + r] * inv[t]) * products[t * matrixRows + rows + r] * inv[t]
                        : products[t * rows + r] * inv[t];
            report.Add(Compare.Relative($"gemv mma {mode}+norm {n}x{rows}x{cols}", Result(dy, n * rows), expected, 1e-5));
        }
        return string.Join("; ", report);
    }

    /// <summary>
    /// The feed-forward's 16-bit activations (CudaKernels.Gemv's narrow: the batch step's gate/up product hands the down
    /// product its output in the weights' type). The normed SwiGLU product's narrow output must be the float64 reference
    /// rounded to that type (within its rounding) and, bit for bit, the float32 output (checked against float64 in "gemv")
    /// rounded to nearest even; the accumulating product over 16-bit activations must be float64 y0 + W·x and, bit for bit,
    /// the float32 path over the same values widened (the mma takes them unchanged). bfloat16 and float16 weights; 2, 5 and 8
    /// rows; 1024, 2304 and 768 columns (one group of the load ring, two and a remainder, the remainder alone); 333 rows (a
    /// partial last tile); the device's grid and a grid of 4 blocks (several tiles a block).
    /// </summary>
    public static string GemvNarrow()
    {
        var report = new List<string>();
        double worst = 0;
        int cases = 0;
        foreach (var type in new[] { DeviceWeightType.BF16, DeviceWeightType.F16 })
            foreach (int cols in new[] { 1024, 2304, 768 })
                foreach (int n in new[] { 2, 5, 8 })
                    foreach (int? wave in new int?[] { null, 4 })
                    {
                        var rnd = new RandomData();
                        const int rows = 333;
                        const float eps = 1e-5f;
                        string what = $"{type} {n}x{cols}{(wave != null ? $" {wave} blocks" : "")}";
                        // SwiGLU + norm, 16-bit output
                        var (dgu, gateUp) = Weights(type, rnd.Floats(2 * rows * cols));
                        var x = rnd.Floats(n * cols, 3f);
                        var norm = rnd.Floats(cols, 2f);
                        float[] wide, narrow;
                        using (dgu)
                        using (var dx = Upload(x))
                        using (var dnorm = Upload(norm))
                        using (var dwide = Poisoned((long)n * rows * 4))
                        using (var dnarrow = Poisoned((n * rows * 2L + 3) / 4 * 4))
                        {
                            UnderGemvWave(wave, () =>
                            {
                                K.Gemv(type, dgu.Pointer, dx.Pointer, dwide.Pointer, rows, cols, n, CudaKernels.GemvMode.SwiGlu, dnorm.Pointer, eps);
                                K.Gemv(type, dgu.Pointer, dx.Pointer, dnarrow.Pointer, rows, cols, n, CudaKernels.GemvMode.SwiGlu, dnorm.Pointer, eps, narrow: true);
                            });
                            wide = Result(dwide, n * rows);
                            narrow = Widen16(type, dnarrow, n * rows);
                        }
                        var (xr, inv) = ReferenceActivations(x, norm, n, cols, eps, type);
                        var products = Reference(gateUp, xr, 2 * rows, cols, n);
                        var expected = new double[n * rows];
                        for (int t = 0; t < n; t++)
                            for (int r = 0; r < rows; r++)
                                expected[t * rows + r] = Silu(products[t * 2 * rows + r] * inv[t]) * products[t * 2 * rows + rows + r] * inv[t];
                        // one rounding to the type: relative error at most 2^-9 (bfloat16) or 2^-12 (float16) a value
                        worst = Math.Max(worst, Compare.RelativeError(narrow, expected));
                        Compare.Relative($"gemv mma narrow SwiGlu+norm {what}", narrow, expected, type == DeviceWeightType.BF16 ? 4e-3 : 6e-4);
                        Compare.Exact($"gemv mma narrow SwiGlu+norm {what} = float32 output rounded", narrow, Round16(type, wide));
                        // Accumulate over 16-bit activations
                        var (ddown, down) = Weights(type, rnd.Floats(rows * cols));
                        var x16 = Round16(type, rnd.Floats(n * cols, 3f)); // values the type holds exactly
                        var y0 = rnd.Floats(n * rows);
                        float[] fromNarrow, fromWide;
                        using (ddown)
                        using (var dx16 = Upload16(type, x16))
                        using (var dxw = Upload(x16))
                        using (var dya = Upload(y0))
                        using (var dyb = Upload(y0))
                        {
                            UnderGemvWave(wave, () =>
                            {
                                K.Gemv(type, ddown.Pointer, dx16.Pointer, dya.Pointer, rows, cols, n, CudaKernels.GemvMode.Accumulate, narrow: true);
                                K.Gemv(type, ddown.Pointer, dxw.Pointer, dyb.Pointer, rows, cols, n, CudaKernels.GemvMode.Accumulate);
                            });
                            fromNarrow = Result(dya, n * rows);
                            fromWide = Result(dyb, n * rows);
                        }
                        var sums = Reference(down, x16, rows, cols, n);
                        for (int i = 0; i < sums.Length; i++) sums[i] += y0[i];
                        Compare.Relative($"gemv mma narrow Accumulate {what}", fromNarrow, sums, 1e-5);
                        worst = Math.Max(worst, Compare.RelativeError(fromNarrow, sums));
                        Compare.Exact($"gemv mma narrow Accumulate {what} = float32 path", fromNarrow, fromWide);
                        cases++;
                    }
        report.Add($"{cases} cases of both products: narrow SwiGLU outputs = float32 outputs rounded, narrow Accumulate = float32 path, bit for bit; worst rel err against float64 {worst:E2}");
        return string.Join("; ", report);
    }

    /// <summary>Values rounded to nearest even in <paramref name="type"/> (bfloat16 or float16), widened back to float32.</summary>
    private static float[] Round16(DeviceWeightType type, float[] v) => type == DeviceWeightType.BF16
        ? [.. RandomData.ToBFloat16(v).Select(b => (float)RandomData.BFloat16ToDouble(b))]
        : [.. RandomData.ToHalf(v).Select(h => (float)h)];

    /// <summary>A device copy of <paramref name="v"/> (values <paramref name="type"/> holds exactly) stored in that type.</summary>
    private static DeviceBuffer Upload16(DeviceWeightType type, float[] v) =>
        type == DeviceWeightType.BF16 ? Upload(RandomData.ToBFloat16(v)) : Upload(RandomData.ToHalf(v));

    /// <summary>The first <paramref name="count"/> 16-bit values of <paramref name="b"/> (bfloat16 or float16) as float32.</summary>
    private static float[] Widen16(DeviceWeightType type, DeviceBuffer b, int count)
    {
        CudaDevice.Shared.Synchronize();
        var bits = new ushort[count];
        b.Download<ushort>(bits);
        return type == DeviceWeightType.BF16
            ? [.. bits.Select(h => (float)RandomData.BFloat16ToDouble(h))]
            : [.. bits.Select(h => (float)BitConverter.UInt16BitsToHalf(h))];
    }

    private static double Silu(double g) => g / (1 + Math.Exp(-g));

    /// <summary>
    /// Runs <paramref name="launch"/> with the tensor-core products' grid capped at <paramref name="wave"/> blocks (null:
    /// the device's own plan), then restores the device's plan.
    /// </summary>
    private static void UnderGemvWave(int? wave, Action launch)
    {
        K.TensorCoreGemvWave = wave;
        try { launch(); }
        finally { K.TensorCoreGemvWave = null; }
    }

    /// <summary>
    /// The decode QKV product with the attention norm, RoPE (both pairings) and the float16 cache append fused into its
    /// epilogue, against the float64 product, norm and rotation; widths with and without 16-byte vectors, and one wider than
    /// a stage of the staged norm (4160 columns: gemv.cuh's GEMV_STAGE of 4096 and a part).
    /// </summary>
    public static string GemvQkvRope()
    {
        var report = new List<string>();
        foreach (var type in new[] { DeviceWeightType.BF16, DeviceWeightType.F32 })
            foreach (int cols in new[] { 1024, 172, 4160 })
                foreach (bool interleaved in new[] { false, true })
                {
                    var rnd = new RandomData();
                    int heads = 6, kvHeads = 2, hd = 64, capacity = 3000, pos0 = rnd.Next(2900);
                    int rows = (heads + 2 * kvHeads) * hd;
                    const float eps = 1e-5f;
                    var (dw, weights) = Weights(type, rnd.Floats(rows * cols));
                    using var _ = dw;
                    var x = rnd.Floats(cols, 3f);
                    var norm = rnd.Floats(cols, 2f);
                    var invFreq = Enumerable.Range(0, hd / 2).Select(i => (float)Math.Pow(10000, -2.0 * i / hd)).ToArray();
                    using var dx = Upload(x);
                    using var dnorm = Upload(norm);
                    using var df = Upload(invFreq);
                    using var dpos = Upload(new[] { pos0 });
                    using var dq = Poisoned(heads * hd * 4L);
                    using var kc = Poisoned(kvHeads * capacity * hd * 2L);
                    using var vc = Poisoned(kvHeads * capacity * hd * 2L);
                    K.GemvQkvRope(type, dw.Pointer, dx.Pointer, dnorm.Pointer, eps, cols, dq.Pointer, kc.Pointer, vc.Pointer, df.Pointer,
                        heads, kvHeads, hd, capacity, dpos.Pointer, interleaved);

                    double ss = 0;
                    foreach (float v in x) ss += (double)v * v;
                    double inv = 1 / Math.Sqrt(ss / cols + eps);
                    var product = Reference(weights, Enumerable.Range(0, cols).Select(i => x[i] * inv * norm[i]).ToArray(), rows, cols, 1);
                    double[] Rotated(int head)
                    {
                        var y = new double[hd];
                        for (int i = 0; i < hd / 2; i++)
                        {
                            int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + hd / 2;
                            double a = pos0 * (double)invFreq[i], x0 = product[head * hd + i0], x1 = product[head * hd + i1];
                            y[i0] = x0 * Math.Cos(a) - x1 * Math.Sin(a);
                            y[i1] = x0 * Math.Sin(a) + x1 * Math.Cos(a);
                        }
                        return y;
                    }
                    var expQ = Enumerable.Range(0, heads).SelectMany(Rotated).ToArray();
                    var expK = Enumerable.Range(heads, kvHeads).SelectMany(Rotated).ToArray();
                    var expV = product.Skip((heads + kvHeads) * hd).ToArray();
                    Dev.Synchronize();
                    var kHost = new Half[kvHeads * capacity * hd];
                    var vHost = new Half[kvHeads * capacity * hd];
                    kc.Download<Half>(kHost);
                    vc.Download<Half>(vHost);
                    var gotK = new float[kvHeads * hd];
                    var gotV = new float[kvHeads * hd];
                    for (int h = 0; h < kvHeads; h++)
                        for (int d = 0; d < hd; d++)
                        {
                            gotK[h * hd + d] = (float)kHost[(h * capacity + pos0) * hd + d];
                            gotV[h * hd + d] = (float)vHost[(h * capacity + pos0) * hd + d];
                        }
                    string what = $"{type} {cols} cols {(interleaved ? "interleaved" : "half-split")} pos {pos0} (seed {rnd.Seed})";
                    // float32 angles at positions of a few thousand carry ~1e-4 rad of rounding; K and V are then rounded to float16.
                    report.Add(Compare.Relative($"q {what}", Result(dq, heads * hd), expQ, 5e-4));
                    report.Add(Compare.Relative($"k(f16) {what}", gotK, expK, 1e-3));
                    report.Add(Compare.Relative($"v(f16) {what}", gotV, expV, 1e-3));
                }
        return string.Join("; ", report);
    }

    /// <summary>cuBLAS products (prefill) in bfloat16 and float32 against float64 on the same rounded operands.</summary>
    public static string CublasGemm()
    {
        var report = new List<string>();
        using var blas = new CudaBlas(Dev);
        foreach (var type in new[] { DeviceWeightType.BF16, DeviceWeightType.F16, DeviceWeightType.F32 })
        {
            var rnd = new RandomData();
            int rows = 300, cols = 256, n = 37;
            var (dw, weights) = Weights(type, rnd.Floats(rows * cols));
            using var _ = dw;
            var x = rnd.Floats(n * cols);
            using var dx = Upload(x);
            using var dn = Poisoned((long)n * cols * 2);
            var y0 = rnd.Floats(n * rows);
            using var dy = Upload(y0); // accumulated into: the residual add of the output and down projections
            double[] xr;
            int dataType;
            ulong operand = dx.Pointer;
            if (type == DeviceWeightType.F32)
            {
                xr = x.Select(v => (double)v).ToArray();
                dataType = Compute.Cuda.Native.CublasApi.DataF32;
            }
            else
            {
                K.Narrow(type, dx.Pointer, dn.Pointer, x.Length);
                operand = dn.Pointer;
                xr = type == DeviceWeightType.BF16
                    ? RandomData.ToBFloat16(x).Select(RandomData.BFloat16ToDouble).ToArray()
                    : RandomData.ToHalf(x).Select(v => (double)v).ToArray();
                dataType = type == DeviceWeightType.BF16 ? Compute.Cuda.Native.CublasApi.DataBF16 : Compute.Cuda.Native.CublasApi.DataF16;
            }
            blas.MatMul(dw.Pointer, operand, dy.Pointer, rows, cols, n, dataType, accumulate: true);
            var expected = Reference(weights, xr, rows, cols, n).Select((v, i) => v + y0[i]).ToArray();
            report.Add(Compare.Relative($"cublas {type} {n}x{cols}x{rows}", Result(dy, n * rows), expected, 1e-5));
        }
        return string.Join("; ", report);
    }

    /// <summary>
    /// Flash-decoding attention over a float16 cache: GQA, several query rows at consecutive positions (causal) or
    /// as separate sequences of a batch (each its own cache and position), the streaming kernel (head dimensions 64
    /// and 128) with the planned, a single and an uneven split, and the general kernel (other head dimensions, 16 heads
    /// per KV head) with its planned and single-chunk plans.
    /// </summary>
    public static string Attention()
    {
        var report = new List<string>();
        foreach (var (heads, kvHeads, hd, pos0, n, batch) in new[]
        {
            (8, 2, 128, 1000, 3, false), (32, 8, 128, 3000, 1, false), (8, 4, 8, 0, 5, false), (14, 2, 64, 300, 1, false),
            (16, 1, 128, 50, 2, false), (3, 3, 96, 70, 2, false), (8, 1, 128, 700, 4, true), (4, 2, 64, 90, 3, true), (6, 2, 32, 40, 2, true),
        })
        {
            var rnd = new RandomData();
            int capacity = pos0 + n + 17;
            int sequences = batch ? n : 1;
            // Per row: its sequence and position (batch rows get different lengths around pos0).
            var seqOf = new int[n];
            var posOf = new int[n];
            for (int t = 0; t < n; t++)
            {
                seqOf[t] = batch ? t : 0;
                posOf[t] = batch ? pos0 + rnd.Next(n + 10) : pos0 + t;
            }
            long seqStride = (long)kvHeads * capacity * hd;
            // Random K and V rounded through float16 (the cache's type), in the cache layout [sequence, kvHeads, capacity, hd].
            var kh = RandomData.ToHalf(rnd.Floats((int)(sequences * seqStride), 2f));
            var vh = RandomData.ToHalf(rnd.Floats((int)(sequences * seqStride), 2f));
            var q = rnd.Floats(n * heads * hd, 2f);
            using var dk = Upload(kh);
            using var dv = Upload(vh);
            using var dq = Upload(q);
            using var dpos = Upload(batch ? posOf : [pos0]);
            var expected = new double[n * heads * hd];
            int group = heads / kvHeads;
            for (int t = 0; t < n; t++)
                for (int h = 0; h < heads; h++)
                {
                    long baseKv = seqOf[t] * seqStride + (long)(h / group) * capacity * hd;
                    ReferenceAttention.Head(q.AsSpan((t * heads + h) * hd, hd), posOf[t] + 1, (j, d) => (double)kh[baseKv + j * hd + d],
                        (j, d) => (double)vh[baseKv + j * hd + d], expected.AsSpan((t * heads + h) * hd, hd));
                }
            int visibleMax = posOf.Max() + 1;
            var planned = K.PlanAttention(visibleMax, n, heads, kvHeads, hd);
            var plans = new List<CudaKernels.AttentionPlan> { planned };
            if (planned.Streaming)
            {
                plans.Add(planned with { Splits = 1 });
                plans.Add(planned with { Splits = 7 });
            }
            else
            {
                int singleChunk = CudaKernels.MaxChunk(group, hd);
                if (visibleMax <= singleChunk) plans.Add(new CudaKernels.AttentionPlan(singleChunk, 1, CudaKernels.SharedBytes(group, hd, singleChunk)));
            }
            foreach (var plan in plans)
            {
                using var po = Poisoned((long)n * heads * plan.Splits * hd * 4);
                using var pml = Poisoned((long)n * heads * plan.Splits * 8);
                using var counters = Dev.Allocate(n * kvHeads * 4L);
                counters.Fill32(0);
                // The second launch shows the counters were left at zero; the streaming kernel's launches alternate its two
                // variants (pipelined, serial). The third repeats the first while asking L2 for two ranges (K and V here): a
                // prefetch is a hint, so the streaming kernel's output (fixed summation order) must be the first's bit for bit;
                // the general kernel's (shared-memory atomics) within the tolerance.
                float[]? first = null;
                for (int launch = 0; launch < 3; launch++)
                {
                    using var dout = Poisoned((long)n * heads * hd * 4);
                    K.PipelinedAttention = launch != 1;
                    var prefetch = launch == 2 ? new L2Prefetch(dk.Pointer, dk.ByteLength, dv.Pointer, dv.ByteLength) : default;
                    K.Attention(dq.Pointer, dk.Pointer, dv.Pointer, dout.Pointer, po.Pointer, pml.Pointer, counters.Pointer,
                        n, heads, kvHeads, hd, capacity, dpos.Pointer, plan, batch ? seqStride : 0, prefetch);
                    K.PipelinedAttention = true;
                    var got = Result(dout, n * heads * hd);
                    string what = $"attention{(plan.Streaming ? launch == 1 ? " streaming serial" : " streaming" : "")}{(launch == 2 ? " + L2 prefetch" : "")} H{heads}/KV{kvHeads} hd{hd} pos{pos0} rows{n}{(batch ? " batch" : "")} splits{plan.Splits} (seed {rnd.Seed})";
                    if (launch == 2 && plan.Streaming)
                    {
                        int differ = Enumerable.Range(0, got.Length).Count(i => BitConverter.SingleToInt32Bits(got[i]) != BitConverter.SingleToInt32Bits(first![i]));
                        if (differ > 0) throw new CheckFailedException($"{what}: {differ} of {got.Length} outputs differ from the launch without the prefetch");
                        continue;
                    }
                    first ??= got;
                    report.Add(Compare.Relative(what, got, expected, 2e-5));
                }
            }
        }
        return string.Join("; ", report);
    }

    /// <summary>
    /// Tensor-core prefill attention (float16 operands, float32 accumulation) against float64 on random inputs: causal
    /// over a cache holding earlier tokens and the chunk's own, query rows that do not fill the last tile, GQA.
    /// </summary>
    public static string FlashPrefill()
    {
        var report = new List<string>();
        foreach (var (heads, kvHeads, hd, pos0, n) in new[] { (8, 2, 128, 0, 100), (4, 4, 64, 300, 200), (32, 8, 128, 77, 64), (6, 1, 64, 1, 9) })
        {
            var rnd = new RandomData();
            int capacity = pos0 + n + 5;
            var kh = RandomData.ToHalf(rnd.Floats(kvHeads * capacity * hd, 2f));
            var vh = RandomData.ToHalf(rnd.Floats(kvHeads * capacity * hd, 2f));
            var q = rnd.Floats(n * heads * hd, 1f);
            using var dk = Upload(kh);
            using var dv = Upload(vh);
            using var dq = Upload(q);
            using var dpos = Upload(new[] { pos0 });
            using var dout = Poisoned((long)n * heads * hd * 4);
            K.FlashPrefill(dq.Pointer, dk.Pointer, dv.Pointer, dout.Pointer, n, heads, kvHeads, hd, capacity, dpos.Pointer);
            var expected = new double[n * heads * hd];
            int group = heads / kvHeads;
            for (int t = 0; t < n; t++)
                for (int h = 0; h < heads; h++)
                {
                    int kvh = h / group;
                    ReferenceAttention.Head(q.AsSpan((t * heads + h) * hd, hd), pos0 + t + 1, (j, d) => (double)kh[(kvh * capacity + j) * hd + d],
                        (j, d) => (double)vh[(kvh * capacity + j) * hd + d], expected.AsSpan((t * heads + h) * hd, hd));
                }
            // float16 queries and probabilities: ~1e-3 relative, where a wrong mask or fragment moves the output by 1e-1.
            report.Add(Compare.Relative($"flash H{heads}/KV{kvHeads} hd{hd} pos{pos0} rows{n} (seed {rnd.Seed})", Result(dout, n * heads * hd), expected, 4e-3));
        }
        return string.Join("; ", report);
    }

    /// <summary>
    /// The greedy argmax (first of equal maxima, as the CPU sampler) over each row of a batch, with the decode step's
    /// bookkeeping: next token per sequence, history[sequence, position], each position advanced.
    /// </summary>
    public static string ArgMax()
    {
        var rnd = new RandomData();
        int capacity = 50, rows = 3, vocab = 50021;
        var pos0 = new[] { 20, 7, 33 };
        using var dpos = Upload(pos0);
        var logits = rnd.Floats(rows * vocab, 10f);
        var expected = new int[rows];
        for (int t = 0; t < rows; t++)
        {
            int first = 1 + rnd.Next(vocab / 2), second = first + 1 + rnd.Next(vocab / 2 - 2);
            logits[t * vocab + first] = logits[t * vocab + second] = 11f; // two equal maxima: the lower index wins, as in the CPU sampler
            expected[t] = first;
        }
        using var dl = Upload(logits);
        using var next = Poisoned(rows * 4L);
        using var history = Poisoned(rows * capacity * 4L);
        K.ArgMax(dl.Pointer, vocab, next.Pointer, history.Pointer, dpos.Pointer, 1, rows, capacity);
        Dev.Synchronize();
        var got = new int[rows];
        next.Download<int>(got);
        var hist = new int[rows * capacity];
        history.Download<int>(hist);
        var pos = new int[rows];
        dpos.Download<int>(pos);
        for (int t = 0; t < rows; t++)
            if (got[t] != expected[t] || hist[t * capacity + pos0[t]] != expected[t] || pos[t] != pos0[t] + 1)
                throw new CheckFailedException($"argmax row {t}: got {got[t]} (history {hist[t * capacity + pos0[t]]}, position {pos[t]}), expected {expected[t]} at position {pos0[t] + 1} (seed {rnd.Seed})");
        return $"argmax picks the first of two maxima in {rows} rows (seed {rnd.Seed})";
    }

    /// <summary>
    /// The output head with the greedy choice folded in and its finish, for 1, 3 and 8 activation rows (CUDA-core and
    /// tensor-core products; the batch product also over 4 blocks striding its row tiles): logits against float64, and
    /// each row's token equal to the first maximum of its logits, with a tie planted per row between two identical weight
    /// rows; history and position per sequence as the decode step writes them.
    /// </summary>
    public static string GemvArgMax()
    {
        var report = new List<string>();
        foreach (var type in new[] { DeviceWeightType.BF16, DeviceWeightType.F16, DeviceWeightType.F32 })
            foreach (int cols in new[] { 512, 172, 4160 }) // 4160: one row's staged norm takes a stage of 4096 and a part
                foreach (int n in cols > 4096 ? [1] : new[] { 1, 3, 8 })
                {
                    bool tensorCores = n > 1 && type != DeviceWeightType.F32 && cols % CudaKernels.TensorCoreGemvColumns == 0;
                    foreach (int? wave in tensorCores ? new int?[] { null, 4 } : [null])
                    {
                        UnderGemvWave(wave, () => report.Add(GemvArgMax(type, cols, n, tensorCores) + (wave != null ? $" ({wave} blocks)" : "")));
                    }
                }
        return string.Join("; ", report);
    }

    private static string GemvArgMax(DeviceWeightType type, int cols, int n, bool tensorCores)
    {
        var rnd = new RandomData();
        const int rows = 3001, capacity = 64;
        var w = rnd.Floats(rows * cols);
        var x = rnd.Floats(n * cols, 3f);
        var norm = rnd.Floats(cols, 2f);
        // Per activation row t, two identical weight rows aligned with its normed activations so they hold its maximum:
        // the first must win. Another row's pair is unaligned with t (a random-sign sum, ~20x smaller at 512 columns).
        var ties = new (int A, int B)[n];
        var used = new HashSet<int>();
        for (int t = 0; t < n; t++)
        {
            int tieA, tieB;
            do { tieA = 17 + rnd.Next(1000); tieB = tieA + 1 + rnd.Next(1900); } while (!used.Add(tieA) || !used.Add(tieB));
            ties[t] = (tieA, tieB);
            for (int c = 0; c < cols; c++)
            {
                float v = 8f * MathF.Sign(x[t * cols + c] * norm[c]) * MathF.Abs(w[tieA * cols + c]);
                w[tieA * cols + c] = v;
                w[tieB * cols + c] = v;
            }
        }
        var (dw, weights) = Weights(type, w);
        using var _ = dw;
        const float eps = 1e-5f;
        using var dx = Upload(x);
        using var dnorm = Upload(norm);
        using var dy = Poisoned((long)n * rows * 4);
        using var best = Dev.Allocate(8L * n);
        best.Fill32(0);
        using var next = Poisoned(4L * n);
        using var history = Dev.Allocate(4L * capacity * n);
        history.Fill32(0xFFFFFFFFu);
        var pos0 = Enumerable.Range(0, n).Select(_ => 5 + rnd.Next(50)).ToArray();
        using var pos = Upload(pos0);
        for (int launch = 0; launch < 2; launch++) // the second launch shows the keys were cleared
        {
            K.GemvArgMax(type, dw.Pointer, dx.Pointer, dy.Pointer, rows, cols, dnorm.Pointer, eps, best.Pointer, n);
            K.ArgMaxFinish(best.Pointer, next.Pointer, history.Pointer, pos.Pointer, launch == 0 ? 1 : 0, n, capacity);
        }
        var (xr, inv) = ReferenceActivations(x, norm, n, cols, eps, tensorCores ? type : null);
        var expected = Reference(weights, xr, rows, cols, n);
        if (tensorCores)
            for (int t = 0; t < n; t++)
                for (int r = 0; r < rows; r++) expected[t * rows + r] *= inv[t];
        var logits = Result(dy, n * rows);
        string name = $"head{(tensorCores ? " mma" : "")} {type} {n}x{rows}x{cols} (seed {rnd.Seed})";
        string compared = Compare.Relative(name, logits, expected, 1e-5);
        var got = new int[n];
        var hist = new int[n * capacity];
        var p = new int[n];
        next.Download<int>(got);
        history.Download<int>(hist);
        pos.Download<int>(p);
        for (int t = 0; t < n; t++)
        {
            int first = 0;
            for (int i = 1; i < rows; i++) if (logits[t * rows + i] > logits[t * rows + first]) first = i;
            int at = t * capacity + pos0[t];
            if (got[t] != first || first != ties[t].A || hist[at] != first || hist[at + 1] != first || p[t] != pos0[t] + 1)
                throw new CheckFailedException($"fused argmax {name}, row {t}: token {got[t]}, history {hist[at]}/{hist[at + 1]}, position {p[t]}; expected {ties[t].A} (first of the tie {ties[t].A}/{ties[t].B}, logits' first maximum {first}) at {pos0[t]}..{pos0[t] + 1}");
        }
        return $"{compared}, tokens = first of each row's tie";
    }

    /// <summary>
    /// The activations a product's float64 reference multiplies, for <paramref name="n"/> rows of x with the fused RMSNorm
    /// (<paramref name="norm"/>; null: none): the CUDA-core kernel's float32 x·(1/rms)·norm, or, for the tensor-core kernel
    /// (<paramref name="tensorCores"/>: its weight type), x·norm rounded to that type with 1/rms (Inv, per row) left for
    /// the caller to apply after the product, as the kernel does.
    /// </summary>
    private static (double[] Xr, double[] Inv) ReferenceActivations(float[] x, float[]? norm, int n, int cols, float eps, DeviceWeightType? tensorCores)
    {
        var xr = new double[n * cols];
        var inv = new double[n];
        for (int t = 0; t < n; t++)
        {
            double ss = 0;
            for (int i = 0; i < cols; i++) ss += (double)x[t * cols + i] * x[t * cols + i];
            inv[t] = norm != null ? 1 / Math.Sqrt(ss / cols + eps) : 1;
            for (int i = 0; i < cols; i++)
            {
                float v = norm != null ? x[t * cols + i] * norm[i] : x[t * cols + i];
                xr[t * cols + i] = tensorCores switch
                {
                    null => norm != null ? x[t * cols + i] * inv[t] * norm[i] : x[t * cols + i],
                    DeviceWeightType.BF16 => RandomData.BFloat16ToDouble(RandomData.ToBFloat16([v])[0]),
                    _ => (double)(Half)v,
                };
            }
        }
        return (xr, inv);
    }

    /// <summary>The weights <paramref name="w"/> stored on the device as <paramref name="type"/>, and the stored values widened to float64.</summary>
    internal static (DeviceBuffer Buffer, double[] Values) Weights(DeviceWeightType type, float[] w) => type switch
    {
        DeviceWeightType.BF16 => Pair(RandomData.ToBFloat16(w), RandomData.BFloat16ToDouble),
        DeviceWeightType.F16 => Pair(RandomData.ToHalf(w), h => (double)h),
        _ => Pair(w, f => (double)f),
    };

    private static (DeviceBuffer, double[]) Pair<T>(T[] stored, Func<T, double> widen) where T : unmanaged =>
        (Upload(stored), stored.Select(widen).ToArray());

    private static double[] Reference(double[] w, float[] x, int rows, int cols, int n) =>
        Reference(w, x.Select(v => (double)v).ToArray(), rows, cols, n);

    private static double[] Reference(double[] w, double[] x, int rows, int cols, int n)
    {
        var y = new double[n * rows];
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++)
            {
                double acc = 0;
                for (int c = 0; c < cols; c++) acc += w[r * cols + c] * x[t * cols + c];
                y[t * rows + r] = acc;
            }
        return y;
    }
}
