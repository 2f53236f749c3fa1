using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Tests.Compute;

/// <summary>Quantize-then-dequantize round trips stay within each format's step-size bound.</summary>
public unsafe class QuantizeTests
{
    private static float[] RoundTrip(GgmlType type, float[] x)
    {
        var q = new byte[GgmlTypeInfo.RowBytes(type, x.Length)];
        Quantize.Row(type, x, q);
        var y = new float[x.Length];
        fixed (byte* p = q) Dequantize.Block(type, p, y);
        return y;
    }

    private static float AbsMax(float[] x, int start, int len)
    {
        float m = 0;
        for (int i = start; i < start + len; i++) m = MathF.Max(m, MathF.Abs(x[i]));
        return m;
    }

    [Fact]
    public void Q8_0_ErrorIsHalfAStep()
    {
        var x = TestTensor.RandomValues(new Random(1), 32 * 64);
        var y = RoundTrip(GgmlType.Q8_0, x);
        for (int i = 0; i < x.Length; i++)
        {
            float step = AbsMax(x, i / 32 * 32, 32) / 127;
            // Half a step from rounding, plus the f16 rounding of d (relative 2^-11) times |q| <= 127.
            Assert.True(MathF.Abs(x[i] - y[i]) <= step * (0.5f + 127f / 2048f) + 1e-7f, $"element {i}: {x[i]} vs {y[i]}");
        }
    }

    [Fact]
    public void Q4_0_ErrorIsAtMostOneStep()
    {
        var x = TestTensor.RandomValues(new Random(2), 32 * 64);
        var y = RoundTrip(GgmlType.Q4_0, x);
        for (int i = 0; i < x.Length; i++)
        {
            // d = max/-8: levels -8..7 cover [-8d, 7d]; the value at +8|d| (opposite sign of max) clips by one step.
            float step = AbsMax(x, i / 32 * 32, 32) / 8;
            Assert.True(MathF.Abs(x[i] - y[i]) <= step * (1f + 16f / 2048f) + 1e-7f, $"element {i}: {x[i]} vs {y[i]}");
        }
    }

    [Fact]
    public void Q4_K_ErrorIsHalfASubBlockStep()
    {
        var rng = new Random(3);
        var x = TestTensor.RandomValues(rng, 256 * 16);
        for (int i = 0; i < 256; i++) x[i] = MathF.Abs(x[i]); // one all-positive super-block (zero min)
        var y = RoundTrip(GgmlType.Q4_K, x);
        for (int sb = 0; sb < x.Length / 256; sb++)
        {
            // Ideal step of sub-block j: its range [min(0, lo), hi] over 15 levels; the 6-bit scale rounds it up by at
            // most one unit d = max step / 63, and the min rounds up by at most dmin (absorbed by the same margin).
            var range = new float[8];
            float maxRange = 0;
            for (int j = 0; j < 8; j++)
            {
                float lo = 0, hi = float.MinValue;
                for (int l = 0; l < 32; l++) { lo = MathF.Min(lo, x[sb * 256 + 32 * j + l]); hi = MathF.Max(hi, x[sb * 256 + 32 * j + l]); }
                float minUnit = 0;
                for (int k = 0; k < 8; k++)
                {
                    float lk = 0;
                    for (int l = 0; l < 32; l++) lk = MathF.Min(lk, x[sb * 256 + 32 * k + l]);
                    minUnit = MathF.Max(minUnit, -lk / 63);
                }
                range[j] = hi - lo + minUnit * 1.01f;
                maxRange = MathF.Max(maxRange, range[j]);
            }
            for (int i = 0; i < 256; i++)
            {
                int at = sb * 256 + i;
                float step = range[i / 32] / 15 + maxRange / 15 / 63 * 1.01f;
                Assert.True(MathF.Abs(x[at] - y[at]) <= 0.5f * step * 1.01f + 1e-6f, $"element {at}: {x[at]} vs {y[at]}");
            }
        }
    }

    [Fact]
    public void Q6_K_ErrorIsHalfASubBlockStep()
    {
        var x = TestTensor.RandomValues(new Random(4), 256 * 16);
        var y = RoundTrip(GgmlType.Q6_K, x);
        for (int sb = 0; sb < x.Length / 256; sb++)
        {
            float all = AbsMax(x, sb * 256, 256);
            for (int i = 0; i < 256; i++)
            {
                int at = sb * 256 + i;
                // Symmetric step amax16/31 per 16 values; the int8 scale rounds up by at most d = max step / 127.
                float step = AbsMax(x, at / 16 * 16, 16) / 31 + all / 31 / 127 * 1.01f;
                Assert.True(MathF.Abs(x[at] - y[at]) <= 0.5f * step * 1.01f + 1e-6f, $"element {at}: {x[at]} vs {y[at]}");
            }
        }
    }

    [Fact]
    public void ZeroBlocksStayZero()
    {
        foreach (var t in new[] { GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K })
            Assert.All(RoundTrip(t, new float[256]), v => Assert.Equal(0f, v));
    }
}
