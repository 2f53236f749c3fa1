using System.Runtime.InteropServices;
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

    private static DeviceBuffer Upload<T>(T[] values) where T : unmanaged
    {
        var b = Dev.Allocate(Math.Max(1, values.Length * Marshal.SizeOf<T>()));
        b.Upload<T>(values);
        return b;
    }

    private static DeviceBuffer Poisoned(long bytes)
    {
        var b = Dev.Allocate(bytes);
        b.Poison();
        return b;
    }

    private static float[] Result(DeviceBuffer b, int n)
    {
        Dev.Synchronize();
        var r = new float[n];
        b.Download<float>(r);
        return r;
    }

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

    /// <summary>RoPE in both pairings with Llama-3 frequency scaling, rows at consecutive positions read from the device.</summary>
    public static string Rope()
    {
        var report = new List<string>();
        foreach (bool interleaved in new[] { false, true })
        {
            var rnd = new RandomData();
            int n = 3, heads = 4, hd = 64, pos0 = 37 + rnd.Next(2000);
            double theta = 500000, factor = 8, low = 1, high = 4, original = 8192;
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
            var x = rnd.Floats(n * heads * hd);
            using var dx = Upload(x);
            using var df = Upload(invFreq.Select(f => (float)f).ToArray());
            using var dpos = Upload(new[] { pos0 });
            K.Rope(dx.Pointer, df.Pointer, n, heads, hd, dpos.Pointer, interleaved);
            var expected = new double[x.Length];
            for (int t = 0; t < n; t++)
            for (int h = 0; h < heads; h++)
            for (int i = 0; i < hd / 2; i++)
            {
                int b = (t * heads + h) * hd;
                int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + hd / 2;
                double a = (pos0 + t) * (double)(float)invFreq[i]; // the device's frequencies are float32
                expected[b + i0] = x[b + i0] * Math.Cos(a) - x[b + i1] * Math.Sin(a);
                expected[b + i1] = x[b + i0] * Math.Sin(a) + x[b + i1] * Math.Cos(a);
            }
            // float32 angles at positions of a few thousand carry ~1e-4 rad of rounding.
            report.Add(Compare.Relative($"rope {(interleaved ? "interleaved" : "half-split")} pos {pos0} (seed {rnd.Seed})", Result(dx, x.Length), expected, 5e-4));
        }
        return string.Join("; ", report);
    }

    /// <summary>SwiGLU, residual add and bias add over lengths that do not fill the last block.</summary>
    public static string Elementwise()
    {
        var rnd = new RandomData();
        int n = 10007, cols = 131;
        var g = rnd.Floats(n, 6f);
        var u = rnd.Floats(n, 2f);
        var bias = rnd.Floats(cols);
        using var dg = Upload(g);
        using var du = Upload(u);
        using var db = Upload(bias);
        K.SwiGlu(dg.Pointer, du.Pointer, n);
        var swiglu = Result(dg, n);
        var expSwiglu = new double[n];
        for (int i = 0; i < n; i++) expSwiglu[i] = g[i] / (1 + Math.Exp(-g[i])) * u[i];
        string a = Compare.Relative("swiglu", swiglu, expSwiglu, 1e-6);

        using var dx = Upload(g);
        K.Add(dx.Pointer, du.Pointer, n);
        K.AddBias(dx.Pointer, db.Pointer, cols, n);
        var expAdd = new double[n];
        for (int i = 0; i < n; i++) expAdd[i] = (double)g[i] + u[i] + bias[i % cols];
        return a + "; " + Compare.Relative($"add+bias (seed {rnd.Seed})", Result(dx, n), expAdd, 1e-6);
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

    /// <summary>Matrix-vector kernels: each weight type, 1/3/8 rows, vectorized (cols % 8 == 0) and scalar widths.</summary>
    public static string Gemv()
    {
        var report = new List<string>();
        foreach (var type in new[] { DeviceWeightType.BF16, DeviceWeightType.F16, DeviceWeightType.F32 })
        foreach (int cols in new[] { 1024, 172 })
        foreach (int n in new[] { 1, 3, 8 })
        {
            var rnd = new RandomData();
            int rows = 333;
            var (dw, weights) = Weights(type, rnd.Floats(rows * cols));
            using var _ = dw;
            var x = rnd.Floats(n * cols);
            using var dx = Upload(x);
            using var dy = Poisoned((long)n * rows * 4);
            K.Gemv(type, dw.Pointer, dx.Pointer, dy.Pointer, rows, cols, n);
            var expected = Reference(weights, x, rows, cols, n);
            report.Add(Compare.Relative($"gemv {type} {n}x{cols}", Result(dy, n * rows), expected, 1e-5));
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
            using var dy = Poisoned((long)n * rows * 4);
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
            blas.MatMul(dw.Pointer, operand, dy.Pointer, rows, cols, n, dataType);
            var expected = Reference(weights, xr, rows, cols, n);
            report.Add(Compare.Relative($"cublas {type} {n}x{cols}x{rows}", Result(dy, n * rows), expected, 1e-5));
        }
        return string.Join("; ", report);
    }

    /// <summary>
    /// Flash-decoding attention over a float16 cache: GQA, several query rows at consecutive positions
    /// (causal), the planner's multi-chunk split and a single chunk, a large and a tiny head dimension.
    /// </summary>
    public static string Attention()
    {
        var report = new List<string>();
        foreach (var (heads, kvHeads, hd, pos0, n) in new[] { (8, 2, 128, 1000, 3), (8, 4, 8, 0, 5), (14, 2, 64, 300, 1) })
        {
            var rnd = new RandomData();
            int capacity = pos0 + n + 17;
            int visibleMax = pos0 + n;
            // Random K and V rounded through float16 (the cache's type), in the cache layout [kvHeads, capacity, hd].
            var kh = RandomData.ToHalf(rnd.Floats(kvHeads * capacity * hd, 2f));
            var vh = RandomData.ToHalf(rnd.Floats(kvHeads * capacity * hd, 2f));
            var q = rnd.Floats(n * heads * hd, 2f);
            using var dk = Upload(kh);
            using var dv = Upload(vh);
            using var dq = Upload(q);
            using var dpos = Upload(new[] { pos0 });
            var expected = new double[n * heads * hd];
            int group = heads / kvHeads;
            for (int t = 0; t < n; t++)
            for (int h = 0; h < heads; h++)
            {
                int kvh = h / group, visible = pos0 + t + 1;
                var s = new double[visible];
                double max = double.NegativeInfinity;
                for (int j = 0; j < visible; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < hd; d++) dot += q[(t * heads + h) * hd + d] * (double)kh[(kvh * capacity + j) * hd + d];
                    s[j] = dot / Math.Sqrt(hd);
                    max = Math.Max(max, s[j]);
                }
                double sum = 0;
                for (int j = 0; j < visible; j++) { s[j] = Math.Exp(s[j] - max); sum += s[j]; }
                for (int d = 0; d < hd; d++)
                {
                    double acc = 0;
                    for (int j = 0; j < visible; j++) acc += s[j] * (double)vh[(kvh * capacity + j) * hd + d];
                    expected[(t * heads + h) * hd + d] = acc / sum;
                }
            }
            var planned = K.PlanAttention(visibleMax, n, heads, kvHeads, hd);
            var single = new CudaKernels.AttentionPlan(1024, 1, (group * hd + group * 1024) * 4);
            foreach (var plan in visibleMax <= 1024 ? new[] { planned, single } : new[] { planned })
            {
                using var po = Poisoned((long)n * heads * plan.Splits * hd * 4);
                using var pml = Poisoned((long)n * heads * plan.Splits * 8);
                using var dout = Poisoned((long)n * heads * hd * 4);
                K.Attention(dq.Pointer, dk.Pointer, dv.Pointer, dout.Pointer, po.Pointer, pml.Pointer, n, heads, kvHeads, hd, capacity, dpos.Pointer, plan);
                report.Add(Compare.Relative($"attention H{heads}/KV{kvHeads} hd{hd} pos{pos0} rows{n} splits{plan.Splits} (seed {rnd.Seed})",
                    Result(dout, n * heads * hd), expected, 2e-5));
            }
        }
        return string.Join("; ", report);
    }

    /// <summary>The float16 cache append (layout [kvHeads, capacity, hd] at the device position) and the greedy argmax (first of equal maxima).</summary>
    public static string AppendAndArgMax()
    {
        var rnd = new RandomData();
        int n = 3, kvHeads = 2, hd = 16, capacity = 50, pos0 = 20;
        var k = rnd.Floats(n * kvHeads * hd);
        var v = rnd.Floats(n * kvHeads * hd);
        using var dk = Upload(k);
        using var dv = Upload(v);
        using var kc = Poisoned(kvHeads * capacity * hd * 2L);
        using var vc = Poisoned(kvHeads * capacity * hd * 2L);
        using var dpos = Upload(new[] { pos0 });
        K.KvAppend(dk.Pointer, dv.Pointer, kc.Pointer, vc.Pointer, n, kvHeads, hd, capacity, dpos.Pointer);
        Dev.Synchronize();
        var kHost = new Half[kvHeads * capacity * hd];
        var vHost = new Half[kvHeads * capacity * hd];
        kc.Download<Half>(kHost);
        vc.Download<Half>(vHost);
        for (int t = 0; t < n; t++)
        for (int h = 0; h < kvHeads; h++)
        for (int d = 0; d < hd; d++)
        {
            int src = (t * kvHeads + h) * hd + d, dst = (h * capacity + pos0 + t) * hd + d;
            if (kHost[dst] != (Half)k[src] || vHost[dst] != (Half)v[src])
                throw new CheckFailedException($"kv_append: token {t} head {h} dim {d} holds {kHost[dst]}/{vHost[dst]}, expected {(Half)k[src]}/{(Half)v[src]}");
        }

        int vocab = 50021;
        var logits = rnd.Floats(vocab, 10f);
        int first = 1 + rnd.Next(vocab / 2), second = first + 1 + rnd.Next(vocab / 2 - 2);
        logits[first] = logits[second] = 11f; // two equal maxima: the lower index wins, as in the CPU sampler
        using var dl = Upload(logits);
        using var next = Poisoned(4);
        using var history = Poisoned(capacity * 4L);
        K.ArgMax(dl.Pointer, vocab, next.Pointer, history.Pointer, dpos.Pointer, 1);
        Dev.Synchronize();
        var got = new int[1];
        next.Download<int>(got);
        var hist = new int[capacity];
        history.Download<int>(hist);
        var pos = new int[1];
        dpos.Download<int>(pos);
        if (got[0] != first || hist[pos0] != first || pos[0] != pos0 + 1)
            throw new CheckFailedException($"argmax: got {got[0]} (history {hist[pos0]}, position {pos[0]}), expected {first} at position {pos0 + 1} (seed {rnd.Seed})");
        return $"kv_append exact; argmax picks {first} of two maxima (seed {rnd.Seed})";
    }

    private static (DeviceBuffer Buffer, double[] Values) Weights(DeviceWeightType type, float[] w) => type switch
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
