using KvSharp.Cache.Blocks;
using static KvSharp.Tests.Cache.Blocks.BlockTestData;

namespace KvSharp.Tests.Cache.Blocks;

public class BlockCodecTests
{
    // ---- sizes ----

    [Fact]
    public void Int2BlockOf32x128IsOneKibOfCodesPlusF16ScalesAndMins()
    {
        // 32·128 codes × 2 bits = 1024 bytes; one (scale, min) f16 pair per group.
        var keys = BlockLayout.ForKeys(KvFormat.Int2, 128);      // 128 channel groups
        var values = BlockLayout.ForValues(KvFormat.Int2, 128);  // 32 tokens × 4 channel groups
        Assert.Equal(1024, keys.CodeBytes);
        Assert.Equal(1024 + 128 * 4, keys.ByteSize);
        Assert.Equal(1024 + 128 * 4, values.ByteSize);
        Assert.Equal(3.0, keys.BitsPerElement, 12);
    }

    [Theory]
    [InlineData(KvFormat.F32, 16384)]
    [InlineData(KvFormat.F16, 8192)]
    [InlineData(KvFormat.BF16, 8192)]
    [InlineData(KvFormat.Fp8E4M3, 4096)]
    [InlineData(KvFormat.Int8, 4096 + 512)]
    [InlineData(KvFormat.Int4, 2048 + 512)]
    [InlineData(KvFormat.Ternary, 1024 + 256)]
    [InlineData(KvFormat.Binary, 512 + 512)]
    public void ByteSizeOf32x128KeyBlock(KvFormat format, int bytes)
        => Assert.Equal(bytes, BlockLayout.ForKeys(format, 128).ByteSize);

    [Fact]
    public void BadLayoutsAreRejectedWithTheProblemNamed()
    {
        var e = Assert.Throws<KvSharpException>(() => new BlockLayout(KvFormat.Int4, QuantAxis.PerToken, 12, 32, 128));
        Assert.Contains("group size", e.Message);
        Assert.Throws<KvSharpException>(() => new BlockLayout(KvFormat.Int4, QuantAxis.PerChannel, 5, 32, 128));
        Assert.Throws<KvSharpException>(() => BlockLayout.ForKeys(KvFormat.F16, 100));
        Assert.Throws<KvSharpException>(() => KvFormatInfo.Parse("int3"));
        Assert.Equal(KvFormat.Ternary, KvFormatInfo.Parse("ternary"));
        Assert.Equal(BlockLayout.ForKeys(KvFormat.F16, 128), BlockLayout.ForValues(KvFormat.F16, 128)); // float layouts ignore the axis
        Assert.NotEqual(BlockLayout.ForKeys(KvFormat.Int4, 128), BlockLayout.ForValues(KvFormat.Int4, 128));
    }

    // ---- bit-exact packing, expected bytes worked out by hand ----

    [Fact]
    public void Int2PackingIsLsbFirstWithF16ScaleThenMin()
    {
        var layout = new BlockLayout(KvFormat.Int2, QuantAxis.PerToken, 8, 1, 8);
        // min 0, max 3 → scale 1; codes equal the values.
        var block = Encode(layout, [0, 1, 2, 3, 3, 2, 1, 0], 1);
        // byte0 = 0 | 1<<2 | 2<<4 | 3<<6 = 0xE4; byte1 = 3 | 2<<2 | 1<<4 | 0<<6 = 0x1B; scale f16(1) = 0x3C00; min 0.
        Assert.Equal(new byte[] { 0xE4, 0x1B, 0x00, 0x3C, 0x00, 0x00 }, block);
    }

    [Fact]
    public void Int4PackingPutsEvenElementsInTheLowNibble()
    {
        var layout = new BlockLayout(KvFormat.Int4, QuantAxis.PerToken, 8, 1, 8);
        // min −1, max 2.75 → scale 3.75/15 = 0.25; codes 0,15,1,14,2,13,3,12.
        var block = Encode(layout, [-1f, 2.75f, -0.75f, 2.5f, -0.5f, 2.25f, -0.25f, 2.0f], 1);
        // scale f16(0.25) = 0x3400, min f16(−1) = 0xBC00.
        Assert.Equal(new byte[] { 0xF0, 0xE1, 0xD2, 0xC3, 0x00, 0x34, 0x00, 0xBC }, block);
    }

    [Fact]
    public void Int8PerChannelStoresOneScaleAndMinPerChannel()
    {
        var layout = new BlockLayout(KvFormat.Int8, QuantAxis.PerChannel, 2, 2, 8);
        var src = new float[16];
        for (int c = 0; c < 8; c++) { src[c] = c; src[8 + c] = c + 255; } // per channel: min c, scale 1
        var block = Encode(layout, src, 2);
        var expected = new List<byte>();
        expected.AddRange(new byte[8]);                       // token 0: all codes 0
        expected.AddRange(Enumerable.Repeat((byte)0xFF, 8));  // token 1: all codes 255
        for (int c = 0; c < 8; c++) expected.AddRange([0x00, 0x3C]); // scales f16(1)
        // mins f16(0..7): 0x0000 0x3C00 0x4000 0x4200 0x4400 0x4500 0x4600 0x4700
        expected.AddRange([0x00, 0x00, 0x00, 0x3C, 0x00, 0x40, 0x00, 0x42, 0x00, 0x44, 0x00, 0x45, 0x00, 0x46, 0x00, 0x47]);
        Assert.Equal(expected.ToArray(), block);
    }

    [Fact]
    public void TernaryPacksTwoBitsPerTritWithAbsMeanScale()
    {
        var layout = new BlockLayout(KvFormat.Ternary, QuantAxis.PerToken, 8, 1, 8);
        // mean |x| = 8/8 = 1; trits round(x): 0, 1, −1, 0, −1 (−1.6 clamps), 0, 1, 1 → codes t+1: 1,2,0,1,0,1,2,2.
        var block = Encode(layout, [0f, 2f, -2f, 0.4f, -1.6f, 0f, 1f, 1f], 1);
        // byte0 = 1 | 2<<2 | 0<<4 | 1<<6 = 0x49; byte1 = 0 | 1<<2 | 2<<4 | 2<<6 = 0xA4; scale 0x3C00.
        Assert.Equal(new byte[] { 0x49, 0xA4, 0x00, 0x3C }, block);
        Assert.Equal(new float[] { 0, 1, -1, 0, -1, 0, 1, 1 }, Decode(layout, block, 1));
    }

    [Fact]
    public void BinaryPacksOneBitPerElementWithScaleThenMean()
    {
        var layout = new BlockLayout(KvFormat.Binary, QuantAxis.PerToken, 8, 1, 8);
        // mean 0, scale mean|x| = 2; bits set where x ≥ 0: 1,0,1,0,1,0,1,0 → 0x55.
        var block = Encode(layout, [1f, -1f, 3f, -3f, 1f, -1f, 3f, -3f], 1);
        Assert.Equal(new byte[] { 0x55, 0x00, 0x40, 0x00, 0x00 }, block);
        Assert.Equal(new float[] { 2, -2, 2, -2, 2, -2, 2, -2 }, Decode(layout, block, 1));
    }

    [Fact]
    public void FloatFormatsPackLittleEndian()
    {
        var f16 = Encode(new BlockLayout(KvFormat.F16, QuantAxis.PerToken, 0, 1, 8), [1f, -2f, 0.5f, 0, 0, 0, 0, 65504f], 1);
        Assert.Equal(new byte[] { 0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38 }, f16[..6]);
        Assert.Equal(new byte[] { 0xFF, 0x7B }, f16[14..]);
        // bf16: 1 + 2^-8 is a tie → even 0x3F80; 1 + 3·2^-8 is a tie → even 0x3F82.
        var bf16 = Encode(new BlockLayout(KvFormat.BF16, QuantAxis.PerToken, 0, 1, 8), [1f, 1f + 1f / 256, 1f + 3f / 256, -2f, 0, 0, 0, 0], 1);
        Assert.Equal(new byte[] { 0x80, 0x3F, 0x80, 0x3F, 0x82, 0x3F, 0x00, 0xC0 }, bf16[..8]);
        var fp8 = Encode(new BlockLayout(KvFormat.Fp8E4M3, QuantAxis.PerToken, 0, 1, 8), [1f, -2f, 448f, 1000f, -1e9f, 1f / 512, 0, float.NaN], 1);
        Assert.Equal(new byte[] { 0x38, 0xC0, 0x7E, 0x7E, 0xFE, 0x01, 0x00, 0x7F }, fp8);
    }

    // ---- FP8 E4M3 against the spec ----

    [Fact]
    public void Fp8DecodesEveryCodeByTheOcpFormula()
    {
        for (int c = 0; c < 256; c++)
        {
            int e = (c >> 3) & 15, m = c & 7;
            double v = e == 0 ? m / 512.0 : Math.Pow(2, e - 7) * (1 + m / 8.0);
            if ((c & 0x80) != 0) v = -v;
            float got = ScalarFormats.FromFp8E4M3((byte)c);
            if ((c & 0x7F) == 0x7F) Assert.True(float.IsNaN(got));
            else Assert.Equal(v, got);
        }
        Assert.Equal(448f, ScalarFormats.FromFp8E4M3(0x7E));
    }

    [Theory]
    [InlineData(1.0625f, 0x38)]        // tie between 1 and 1.125 → even mantissa (1)
    [InlineData(1.1875f, 0x3A)]        // tie between 1.125 and 1.25 → even mantissa (1.25)
    [InlineData(0.0029296875f, 0x02)]  // 1.5·2^-9: subnormal tie → 2·2^-9
    [InlineData(0.0009765625f, 0x00)]  // 0.5·2^-9: tie → 0
    [InlineData(464f, 0x7E)]           // tie between 448 and (absent) 480 → 448
    [InlineData(465f, 0x7E)]           // saturates instead of NaN
    [InlineData(0.015625f, 0x08)]      // 2^-6, the smallest normal
    [InlineData(0.01513671875f, 0x08)] // 7.75·2^-9 rounds up into the first normal
    [InlineData(-0.0f, 0x80)]
    public void Fp8RoundsToNearestEvenAndSaturates(float x, int code)
        => Assert.Equal((byte)code, ScalarFormats.ToFp8E4M3(x));

    [Fact]
    public void Fp8PicksTheNearestCodeAndStaysWithinTwoToMinusFourRelative()
    {
        var finite = Enumerable.Range(0, 256).Where(c => (c & 0x7F) != 0x7F).Select(c => (double)ScalarFormats.FromFp8E4M3((byte)c)).ToArray();
        var rng = new Random(7);
        for (int i = 0; i < 4000; i++)
        {
            double x = (rng.Next(2) == 0 ? -1 : 1) * Math.Pow(2, -6 + rng.NextDouble() * 14.7); // normal range up to ~448
            double got = ScalarFormats.FromFp8E4M3(ScalarFormats.ToFp8E4M3((float)x));
            double best = finite.Min(v => Math.Abs(v - (float)x));
            Assert.Equal(best, Math.Abs(got - (float)x), 12);
            Assert.True(Math.Abs(got - x) <= Math.Abs(x) / 16, $"{x} → {got}");
        }
    }

    // ---- round trips on fresh random inputs ----

    public static TheoryData<KvFormat, QuantAxis, int, int> QuantizedCases()
    {
        var d = new TheoryData<KvFormat, QuantAxis, int, int>();
        foreach (var f in Quantized)
            foreach (var tokens in new[] { 32, 19, 1 })
            {
                d.Add(f, QuantAxis.PerChannel, 32, tokens);
                d.Add(f, QuantAxis.PerChannel, 8, tokens);
                d.Add(f, QuantAxis.PerToken, 32, tokens);
                d.Add(f, QuantAxis.PerToken, 16, tokens);
            }
        return d;
    }

    [Theory]
    [MemberData(nameof(QuantizedCases))]
    public void QuantizedRoundTripMatchesTheFormatRule(KvFormat format, QuantAxis axis, int group, int tokens)
    {
        const int d = 128;
        var layout = new BlockLayout(format, axis, group, 32, d);
        var x = Rows(1000 + tokens * 7 + group + (int)format * 31, tokens, d);
        var block = Encode(layout, x, tokens);
        var y = Decode(layout, block, tokens);
        foreach (var els in Groups(layout, tokens))
        {
            var v = els.Select(e => (double)x[e]).ToArray();
            switch (format)
            {
                case KvFormat.Ternary:
                    {
                        double s = F16(v.Average(Math.Abs));
                        foreach (int e in els)
                        {
                            double t = s > 0 ? Math.Clamp(Math.Round(x[e] / s, MidpointRounding.ToEven), -1, 1) : 0;
                            Assert.Equal((float)(t * s), y[e]);
                        }
                        break;
                    }
                case KvFormat.Binary:
                    {
                        double m = F16(v.Average());
                        double s = F16(v.Average(a => Math.Abs(a - m)));
                        foreach (int e in els) Assert.Equal((float)(x[e] >= m ? m + s : m - s), y[e]);
                        break;
                    }
                default:
                    {
                        int qmax = (1 << format.BitsPerElement()) - 1;
                        double lo = v.Min(), hi = v.Max(), scale = (hi - lo) / qmax;
                        double s16 = F16(scale), m16 = F16(lo);
                        double bound = s16 / 2 + Math.Abs(lo - m16) + qmax * Math.Abs(scale - s16) + 1e-6 * (Math.Abs(lo) + Math.Abs(hi));
                        foreach (int e in els)
                            Assert.True(Math.Abs(x[e] - y[e]) <= bound, $"{layout} element {e}: {x[e]} → {y[e]}, bound {bound}");
                        break;
                    }
            }
        }
    }

    [Fact]
    public void BinaryScaleIsTheLeastSquaresScaleForItsSigns()
    {
        // Independent check of the 1-bit rule: with the signs fixed, mean |x − mean| minimizes Σ (x − mean − s·scale)².
        var layout = new BlockLayout(KvFormat.Binary, QuantAxis.PerToken, 32, 1, 32);
        var x = Gaussians(5, 32);
        var y = Decode(layout, Encode(layout, x, 1), 1);
        double mean = (y.Max() + y.Min()) / 2; // decoded values are exactly mean ± scale
        double scale = (y.Max() - y.Min()) / 2;
        double Err(double sc) => x.Select((v, i) => Math.Pow(v - (y[i] >= mean ? mean + sc : mean - sc), 2)).Sum();
        Assert.True(Err(scale) <= Err(scale * 1.01) && Err(scale) <= Err(scale * 0.99));
    }

    [Theory]
    [InlineData(KvFormat.F32)]
    [InlineData(KvFormat.F16)]
    [InlineData(KvFormat.BF16)]
    [InlineData(KvFormat.Fp8E4M3)]
    public void FloatRoundTripsRoundOnce(KvFormat format)
    {
        var layout = BlockLayout.ForKeys(format, 64);
        var x = Rows(3, 21, 64);
        var y = Decode(layout, Encode(layout, x, 21), 21);
        for (int e = 0; e < x.Length; e++)
        {
            float expected = format switch
            {
                KvFormat.F32 => x[e],
                KvFormat.F16 => (float)(Half)x[e],
                KvFormat.BF16 => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(x[e]) & unchecked((int)0xFFFF0000)),
                _ => y[e],
            };
            if (format == KvFormat.BF16) Assert.True(Math.Abs(x[e] - y[e]) <= Math.Abs(x[e]) / 256 && Math.Abs(y[e] - expected) <= Math.Abs(expected) / 128); // half an ulp; truncation or one ulp up
            else if (format == KvFormat.Fp8E4M3) Assert.True(Math.Abs(x[e] - y[e]) <= Math.Max(Math.Abs(x[e]) / 16, 1.0 / 1024));
            else Assert.Equal(expected, y[e]);
        }
    }

    [Fact]
    public void PartialBlockLeavesAbsentRowsAndGroupsZero()
    {
        var layout = new BlockLayout(KvFormat.Int4, QuantAxis.PerChannel, 8, 32, 64);
        var block = Encode(layout, Rows(9, 10, 64), 10);
        // Codes of tokens 10.. and the parameters of token groups 2 and 3 (tokens 16..31) are zero.
        Assert.All(block[(10 * 64 / 2)..layout.CodeBytes], b => Assert.Equal(0, b));
        int groups = layout.GroupCount;
        for (int which = 0; which < 2; which++)
            Assert.All(block.AsSpan(layout.CodeBytes + 2 * (which * groups + 2 * 64), 2 * 2 * 64).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void AppendingRowsGivesTheSameBytesAsEncodingTheWholeBlock()
    {
        const int d = 64, n = 29;
        var x = Rows(17, n, d);
        foreach (var layout in Layouts(32, d).Where(l => !l.Format.IsVidKv())) // VidKV blocks are encoded whole (VidKvBlockTests)
        {
            var whole = Encode(layout, x, n);
            var pieces = Enumerable.Repeat((byte)0xA5, layout.ByteSize).ToArray(); // garbage where rows will go
            bool perChannel = layout.Format.IsQuantized() && layout.Axis == QuantAxis.PerChannel;
            int step = perChannel ? layout.GroupSize : 5;
            if (perChannel) Array.Clear(pieces); // per-channel parameters of absent groups are only cleared by Encode
            for (int t = 0; t < n; t += step)
            {
                int c = Math.Min(step, n - t);
                BlockCodec.EncodeRows(layout, x.AsSpan(t * d, c * d), t, c, pieces);
            }
            if (!perChannel) // garbage left in absent rows' parameters is never read; compare what the rows use
                Assert.Equal(Decode(layout, whole, n), Decode(layout, pieces, n));
            else
                Assert.Equal(whole, pieces);
        }
    }

    [Fact]
    public void PerChannelAppendMustStartATokenGroup()
    {
        var layout = new BlockLayout(KvFormat.Int2, QuantAxis.PerChannel, 8, 32, 64);
        var e = Assert.Throws<KvSharpException>(() => BlockCodec.EncodeRows(layout, new float[64], 3, 1, new byte[layout.ByteSize]));
        Assert.Contains("group of 8", e.Message);
    }

    private static double F16(double x) => (double)(Half)x;

    /// <summary>Element indices of each group with tokens present, derived from the layout definition.</summary>
    private static IEnumerable<int[]> Groups(BlockLayout l, int tokens)
    {
        int d = l.HeadDim, gs = l.GroupSize;
        if (l.Axis == QuantAxis.PerChannel)
        {
            for (int t0 = 0; t0 < tokens; t0 += gs)
                for (int c = 0; c < d; c++)
                    yield return Enumerable.Range(t0, Math.Min(gs, tokens - t0)).Select(t => t * d + c).ToArray();
        }
        else
        {
            for (int t = 0; t < tokens; t++)
                for (int c0 = 0; c0 < d; c0 += gs)
                    yield return Enumerable.Range(c0, gs).Select(c => t * d + c).ToArray();
        }
    }
}
