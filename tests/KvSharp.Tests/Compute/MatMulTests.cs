using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Tests.Compute;

/// <summary>
/// Every matmul path against a float64 naive product of the dequantized weights (the dequantizer is
/// checked independently by <see cref="DequantizeTests"/>).
/// </summary>
[Collection("CpuThreads")]
public class MatMulTests
{
    public static TheoryData<GgmlType> Types => new()
    {
        GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K,
    };

    private static int ColsFor(GgmlType t, int seed) => GgmlTypeInfo.BlockSize(t) == 256 ? 256 * (1 + seed % 3) : 32 * (5 + seed % 7) + (t == GgmlType.F32 ? 0 : 0);

    private static (TestTensor w, double[] wd, float[] x) Make(GgmlType type, int rows, int cols, int n, int seed)
    {
        var rng = new Random(seed);
        var wf = TestTensor.RandomValues(rng, rows * cols, 0.5);
        var bytes = Quantize.Matrix(type, wf, rows, cols);
        var w = new TestTensor(type, rows, cols, bytes);
        var deq = new float[cols];
        var wd = new double[rows * cols];
        for (int r = 0; r < rows; r++)
        {
            Kernels.GetRow(w.View, r, deq);
            for (int c = 0; c < cols; c++) wd[r * cols + c] = deq[c];
        }
        var x = TestTensor.RandomValues(rng, n * cols, 2.0);
        return (w, wd, x);
    }

    private static float[] Run(TensorView w, float[] x, int n, MatMulCpu.SimdLevel? level = null)
    {
        var y = new float[n * w.Rows];
        MatMulCpu.ForceLevel = level;
        try { Kernels.MatMul(w, x, y, n); }
        finally { MatMulCpu.ForceLevel = null; }
        return y;
    }

    /// <summary>Per-activation-block magnitude the quantized-activation error scales with.</summary>
    private static double ActStep(GgmlType t, float[] x, int start, int cols, int c)
    {
        if (t is GgmlType.Q8_0 or GgmlType.Q4_0)
        {
            int b = c / 32 * 32;
            double m = 0;
            for (int i = 0; i < 32; i++) m = Math.Max(m, Math.Abs(x[start + b + i]));
            // Q8_0 activations: step amax/127, rounding error half a step, plus the f16 rounding of d
            // (relative 2^-11) times |q| <= 127.
            return m / 127 * (0.5 + 127.0 / 2048);
        }
        if (t is GgmlType.Q4_K or GgmlType.Q6_K)
        {
            int b = c / 256 * 256;
            double m = 0;
            for (int i = 0; i < 256; i++) m = Math.Max(m, Math.Abs(x[start + b + i]));
            // Q8_K activations: f32 scale max/127, half-step rounding.
            return m / 127 * 0.5 * (1 + 1e-6);
        }
        return 0;
    }

    private static void CheckAgainstNaive(GgmlType type, int rows, int cols, int n, float[] y, double[] wd, float[] x)
    {
        for (int t = 0; t < n; t++)
        {
            for (int r = 0; r < rows; r++)
            {
                double exact = 0, absSum = 0, actErr = 0;
                for (int c = 0; c < cols; c++)
                {
                    double w = wd[r * cols + c];
                    exact += w * x[t * cols + c];
                    absSum += Math.Abs(w * x[t * cols + c]);
                    actErr += Math.Abs(w) * ActStep(type, x, t * cols, cols, c);
                }
                // float32 accumulation of cols products: |error| <= cols * 2^-24 * sum|w x| (first-order bound);
                // quantized activations add sum |w_c| * (per-element activation error bound).
                double tol = cols * Math.Pow(2, -24) * (absSum + actErr) + actErr * 1.0001 + 1e-30;
                double got = y[t * rows + r];
                Assert.True(Math.Abs(got - exact) <= tol,
                    $"{type} [{rows}x{cols}] n={n} y[{t},{r}] = {got}, exact {exact}, tolerance {tol}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void MatchesFloat64NaiveProduct(GgmlType type)
    {
        int seed = (int)type;
        foreach (int n in new[] { 1, 3, 17 })
        {
            foreach (int rows in new[] { 1, 7, 37 })
            {
                int cols = ColsFor(type, seed + n + rows);
                var (w, wd, x) = Make(type, rows, cols, n, seed * 100 + n + rows);
                using (w)
                {
                    var y = Run(w.View, x, n);
                    CheckAgainstNaive(type, rows, cols, n, y, wd, x);
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void FallbacksEqualSimd(GgmlType type)
    {
        var levels = new[] { MatMulCpu.SimdLevel.Scalar, MatMulCpu.SimdLevel.Vector128, MatMulCpu.SimdLevel.Avx512 };
        foreach (var level in levels)
            foreach (int n in new[] { 1, 5 })
            {
                int rows = 45, cols = GgmlTypeInfo.BlockSize(type) == 256 ? 512 : 320;
                var (w, _, x) = Make(type, rows, cols, n, 7 + n);
                using (w)
                {
                    var simd = Run(w.View, x, n);
                    var scalar = Run(w.View, x, n, level);
                    for (int i = 0; i < simd.Length; i++)
                    {
                        // Same products (integer sums are exact in both); only float summation order differs.
                        float scale = 0;
                        for (int c = 0; c < cols; c++) scale += MathF.Abs(x[i / rows * cols + c]);
                        Assert.True(MathF.Abs(simd[i] - scalar[i]) <= 2e-6f * scale, $"{type} {level} n={n} element {i}: {simd[i]} vs {scalar[i]}");
                    }
                }
            }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void OneAndTwoThreadsAgreeExactly(GgmlType type)
    {
        int before = CpuThreads.Count;
        try
        {
            foreach (int n in new[] { 1, 17 })
            {
                int rows = 203, cols = GgmlTypeInfo.BlockSize(type) == 256 ? 512 : 256;
                var (w, _, x) = Make(type, rows, cols, n, 11 + n);
                using (w)
                {
                    CpuThreads.Count = 1;
                    var one = Run(w.View, x, n);
                    CpuThreads.Count = 2;
                    var two = Run(w.View, x, n);
                    Assert.Equal(one, two);
                }
            }
        }
        finally
        {
            CpuThreads.Count = before;
        }
    }

    [Fact]
    public void GenericFallbackTypesMatchNaive()
    {
        // Types without a specialized kernel go through dequantize-row + float dot: build Q5_0 and Q2_K
        // weights from raw random bytes (any bytes are valid blocks once the f16 scales are finite).
        foreach (var type in new[] { GgmlType.Q5_0, GgmlType.Q4_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q5_K })
        {
            var rng = new Random((int)type);
            int rows = 9, cols = 256, n = 3;
            int bb = GgmlTypeInfo.BlockBytes(type), bs = GgmlTypeInfo.BlockSize(type);
            var bytes = new byte[GgmlTypeInfo.RowBytes(type, cols) * rows];
            rng.NextBytes(bytes);
            int[] halfOffsets = type switch
            {
                GgmlType.Q5_0 => new[] { 0 },
                GgmlType.Q4_1 => new[] { 0, 2 },
                GgmlType.Q2_K => new[] { 80, 82 },
                GgmlType.Q3_K => new[] { 108 },
                _ => new[] { 0, 2 },
            };
            for (int b = 0; b < bytes.Length / bb; b++)
                foreach (int off in halfOffsets)
                    BitConverter.TryWriteBytes(bytes.AsSpan(b * bb + off, 2), (Half)(rng.NextDouble() * 0.1));
            using var w = new TestTensor(type, rows, cols, bytes);
            var wd = new double[rows * cols];
            var deq = new float[cols];
            for (int r = 0; r < rows; r++)
            {
                Kernels.GetRow(w.View, r, deq);
                for (int c = 0; c < cols; c++) wd[r * cols + c] = deq[c];
            }
            var x = TestTensor.RandomValues(rng, n * cols);
            CheckAgainstNaive(type, rows, cols, n, Run(w.View, x, n), wd, x);
            Assert.Equal(0, bs % 32);
        }
    }

    [Fact]
    public void LargePrefillTilesMatchNaive()
    {
        // Enough activation rows to cross the L2 tile boundary and the 4x3 register tile remainders.
        var (w, wd, x) = Make(GgmlType.F32, 41, 96, 100, 5);
        using (w) CheckAgainstNaive(GgmlType.F32, 41, 96, 100, Run(w.View, x, 100), wd, x);
        var (q, qd, qx) = Make(GgmlType.F16, 23, 2048, 40, 6);
        using (q) CheckAgainstNaive(GgmlType.F16, 23, 2048, 40, Run(q.View, qx, 40), qd, qx);
    }

    [Fact]
    public void ConcurrentCallersGetTheSameResults()
    {
        // Several threads issuing matmuls at once: one gets the pool, the others run inline; a call made
        // from inside a pool job (nested) also runs inline. All must equal the single-caller result.
        var (w, _, x) = Make(GgmlType.Q8_0, 301, 512, 3, 21);
        using (w)
        {
            var expected = Run(w.View, x, 3);
            var failures = 0;
            Parallel.For(0, 6, new ParallelOptions { MaxDegreeOfParallelism = 3 }, _ =>
            {
                for (int rep = 0; rep < 20; rep++)
                    if (!Run(w.View, x, 3).AsSpan().SequenceEqual(expected)) Interlocked.Increment(ref failures);
            });
            CpuThreads.For(4, 1, (s, e) =>
            {
                for (int i = s; i < e; i++)
                    if (!Run(w.View, x, 3).AsSpan().SequenceEqual(expected)) Interlocked.Increment(ref failures);
            });
            Assert.Equal(0, failures);
        }
    }

    [Fact]
    public void BadShapesAreRejected()
    {
        var (w, _, x) = Make(GgmlType.F32, 4, 64, 1, 1);
        using (w)
        {
            Assert.Throws<ArgumentException>(() => Kernels.MatMul(w.View, x.AsSpan(0, 10), new float[4], 1));
            Assert.Throws<ArgumentException>(() => Kernels.MatMul(w.View, x, new float[3], 1));
        }
    }

    /// <summary>
    /// F16 decode's scaled widening (FloatDot.F16x4Scaled): subnormal and extreme weights, and activations
    /// so large that the 2^112 pre-scale must back off, still give the float64 product.
    /// </summary>
    [Theory]
    [InlineData(1.0)]
    [InlineData(3e4)]
    [InlineData(1e9)]
    [InlineData(1e-30)]
    public void F16DecodeHandlesSubnormalWeightsAndExtremeActivations(double activationScale)
    {
        const int rows = 13, cols = 100; // 4-row blocks, a 1-row rest, and a scalar tail of 4 columns
        var rng = new Random(11);
        var halves = new Half[rows * cols];
        for (int i = 0; i < halves.Length; i++)
        {
            halves[i] = (i % 5) switch
            {
                0 => BitConverter.UInt16BitsToHalf((ushort)rng.Next(1, 0x400)),            // positive subnormal
                1 => BitConverter.UInt16BitsToHalf((ushort)(0x8000 | rng.Next(1, 0x400))), // negative subnormal
                2 => (Half)(rng.NextDouble() * 120000 - 60000),                              // near the f16 limit
                _ => (Half)(rng.NextDouble() * 2 - 1),
            };
        }
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(halves.AsSpan()).ToArray();
        var w = new TestTensor(GgmlType.F16, rows, cols, bytes);
        var x = TestTensor.RandomValues(rng, cols, activationScale);
        var wd = halves.Select(h => (double)h).ToArray();
        CheckAgainstNaive(GgmlType.F16, rows, cols, 1, Run(w.View, x, 1, MatMulCpu.SimdLevel.Avx2), wd, x);
    }
}
