using KvSharp.Compute.Cpu;
using KvSharp.Models;

namespace KvSharp.Tests.Compute;

/// <summary>Elementwise kernels against float64 formulas.</summary>
public unsafe class ElementwiseTests
{
    [Fact]
    public void HalfWideningMatchesBclForEveryHalf()
    {
        var src = new ushort[65536];
        for (int i = 0; i < src.Length; i++) src[i] = (ushort)i;
        var dst = new float[src.Length];
        fixed (ushort* s = src) fixed (float* d = dst) FloatDot.HalfRow(s, d, src.Length);
        for (int i = 0; i < src.Length; i++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)i);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(dst[i]), $"half 0x{i:X4}");
            else Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(dst[i]), $"half 0x{i:X4}: {dst[i]} vs {expected}");
        }
    }

    [Fact]
    public void ScalarBlockScaleWideningMatchesBclForEveryHalf()
    {
        for (int i = 0; i < 65536; i++)
        {
            ushort h = (ushort)i;
            float expected = (float)BitConverter.UInt16BitsToHalf(h);
            float got = QuantDot.H((byte*)&h);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(got));
            else Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(got));
        }
    }

    [Fact]
    public void WordWiseK4ScaleUnpackingMatchesPerIndexRule()
    {
        var rng = new Random(9);
        var bytes = new byte[12];
        for (int rep = 0; rep < 200; rep++)
        {
            rng.NextBytes(bytes);
            fixed (byte* q = bytes)
            {
                QuantDot.ScalesMinsK4(q, out ulong sc, out ulong mn);
                for (int j = 0; j < 8; j++)
                {
                    Dequantize.ScaleMinK4(j, q, out int s, out int m);
                    Assert.Equal(s, (int)((sc >> (8 * j)) & 0xFF));
                    Assert.Equal(m, (int)((mn >> (8 * j)) & 0xFF));
                }
            }
        }
    }

    [Fact]
    public void RmsNormMatchesFormula()
    {
        var rng = new Random(1);
        int d = 67, rows = 3;
        var x = TestTensor.RandomValues(rng, d * rows, 3);
        var w = TestTensor.RandomValues(rng, d);
        var y = new float[x.Length];
        Kernels.RmsNorm(x, w, y, 1e-5f);
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double)x[r * d + i] * x[r * d + i];
            double inv = 1 / Math.Sqrt(ss / d + 1e-5);
            for (int i = 0; i < d; i++) Assert.Equal(x[r * d + i] * inv * w[i], y[r * d + i], 5);
        }
    }

    [Fact]
    public void SwiGluMatchesFormula()
    {
        var rng = new Random(2);
        var g = TestTensor.RandomValues(rng, 1500, 12);
        var u = TestTensor.RandomValues(rng, 1500, 2);
        var expected = g.Select((v, i) => v / (1 + Math.Exp(-(double)v)) * u[i]).ToArray();
        Kernels.SwiGlu(g, u);
        for (int i = 0; i < g.Length; i++) Assert.True(Math.Abs(g[i] - expected[i]) <= 1e-5 * (1 + Math.Abs(expected[i])), $"{i}: {g[i]} vs {expected[i]}");
    }

    [Fact]
    public void SoftmaxIsStableForLargeLogits()
    {
        var x = new float[] { 1000f, 999f, 998f, -5f, 1000f };
        double[] e = x.Select(v => Math.Exp(v - 1000.0)).ToArray();
        double sum = e.Sum();
        Kernels.Softmax(x);
        for (int i = 0; i < x.Length; i++) Assert.Equal(e[i] / sum, x[i], 6);
    }

    [Theory]
    [InlineData(RopeStyle.Interleaved)]
    [InlineData(RopeStyle.HalfSplit)]
    public void RopeRotatesPairsByPositionTimesFrequency(RopeStyle style)
    {
        var config = new ModelConfig
        {
            Architecture = "llama",
            VocabSize = 10,
            HiddenSize = 48,
            IntermediateSize = 8,
            NumLayers = 1,
            NumHeads = 3,
            NumKvHeads = 3,
            HeadDim = 16,
            RopeTheta = 10000,
            RopeStyle = style,
        };
        var rope = new Rope(config);
        var x = TestTensor.RandomValues(new Random(3), 48);
        var orig = (float[])x.Clone();
        const int pos = 37;
        rope.Apply(x, pos);
        for (int h = 0; h < 3; h++)
        {
            for (int i = 0; i < 8; i++)
            {
                double theta = pos * Math.Pow(10000, -2.0 * i / 16);
                int a = style == RopeStyle.Interleaved ? 2 * i : i, b = style == RopeStyle.Interleaved ? 2 * i + 1 : i + 8;
                double x0 = orig[h * 16 + a], x1 = orig[h * 16 + b];
                Assert.Equal(x0 * Math.Cos(theta) - x1 * Math.Sin(theta), x[h * 16 + a], 4);
                Assert.Equal(x0 * Math.Sin(theta) + x1 * Math.Cos(theta), x[h * 16 + b], 4);
            }
        }
    }

    [Fact]
    public void ParallelForCoversEveryIndexOnce()
    {
        var hits = new int[1000];
        CpuThreads.For(hits.Length, 7, (s, e) => { for (int i = s; i < e; i++) Interlocked.Increment(ref hits[i]); });
        Assert.All(hits, h => Assert.Equal(1, h));
    }
}
