using KvSharp.Cache.Blocks;
using static KvSharp.Tests.Cache.Blocks.BlockTestData;

namespace KvSharp.Tests.Cache.Blocks;

/// <summary>
/// The fused kernels against float64 computations over the DECODED block (BlockCodec.Decode is checked
/// against the format rules in BlockCodecTests), on the AVX2 path and on the scalar fallback.
/// </summary>
public class BlockAttentionTests
{
    public static TheoryData<int, bool> Cases()
    {
        var d = new TheoryData<int, bool>();
        foreach (int tokens in new[] { 32, 13, 1 })
            foreach (bool scalar in new[] { false, true })
                d.Add(tokens, scalar);
        return d;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ScoresEqualFloat64DotsOverDecodedKeys(int tokens, bool scalar)
    {
        using var _ = new ScalarScope(scalar);
        foreach (int d in new[] { 128, 64 })
            foreach (var layout in Layouts(32, d))
            {
                var keys = Rows(11 + d + tokens, tokens, d);
                var block = Encode(layout, keys, tokens);
                var k = Decode(layout, block, tokens);
                var q = Gaussians(12 + tokens, d, 1 / Math.Sqrt(d));
                var scores = new float[tokens];
                BlockAttention.Scores(layout, block, tokens, q, scores);
                for (int t = 0; t < tokens; t++)
                {
                    double exact = 0, mag = 0;
                    for (int c = 0; c < d; c++) { exact += (double)q[c] * k[t * d + c]; mag += Math.Abs((double)q[c] * k[t * d + c]); }
                    Assert.True(Math.Abs(scores[t] - exact) <= 1e-5 * mag + 1e-30, $"{layout} token {t}: {scores[t]} vs {exact} (scalar={scalar})");
                }
            }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void AccumulateValuesAddsFloat64WeightedSumOfDecodedValues(int tokens, bool scalar)
    {
        using var _ = new ScalarScope(scalar);
        foreach (int d in new[] { 128, 64 })
            foreach (var layout in Layouts(32, d))
            {
                var values = Rows(21 + d + tokens, tokens, d);
                var block = Encode(layout, values, tokens);
                var v = Decode(layout, block, tokens);
                var w = Gaussians(22 + tokens, tokens).Select(MathF.Abs).ToArray();
                var acc0 = Gaussians(23, d);
                var acc = (float[])acc0.Clone();
                BlockAttention.AccumulateValues(layout, block, tokens, w, acc);
                for (int c = 0; c < d; c++)
                {
                    double exact = acc0[c], mag = Math.Abs(acc0[c]);
                    for (int t = 0; t < tokens; t++) { exact += (double)w[t] * v[t * d + c]; mag += Math.Abs((double)w[t] * v[t * d + c]); }
                    Assert.True(Math.Abs(acc[c] - exact) <= 1e-5 * mag + 1e-30, $"{layout} channel {c}: {acc[c]} vs {exact} (scalar={scalar})");
                }
            }
    }

    [Fact]
    public void SimdAndScalarAgreeOnSpecialF16AndFp8Values()
    {
        // Subnormals, signed zeros, extremes: a weight of 1 into a zero accumulator returns each element unchanged.
        float[] specials = [0f, -0f, 6e-8f, -3e-5f, 6.1e-5f, 65504f, -65504f, 1f, 0.001953125f, -448f, 300f, 1e-3f, -2.5f, 7f, 0.1f, -0.1f];
        foreach (var format in new[] { KvFormat.F16, KvFormat.Fp8E4M3, KvFormat.BF16 })
        {
            var layout = new BlockLayout(format, QuantAxis.PerToken, 0, 1, 16);
            var block = Encode(layout, specials, 1);
            var expected = Decode(layout, block, 1);
            var acc = new float[16];
            BlockAttention.AccumulateValues(layout, block, 1, [1f], acc);
            for (int c = 0; c < 16; c++) Assert.Equal(expected[c], acc[c]);
        }
    }

    [Fact]
    public void VectorReadersMatchTheScalarConversionOnEveryF16AndFp8Code()
    {
        // Raw blocks holding every code once; weight 1 into a zero accumulator returns each element (±0 compare equal).
        var f16 = new BlockLayout(KvFormat.F16, QuantAxis.PerToken, 0, 1, 8192);
        for (int part = 0; part < 8; part++)
        {
            var block = new byte[f16.ByteSize];
            for (int c = 0; c < 8192; c++) BitConverter.TryWriteBytes(block.AsSpan(2 * c), (ushort)(part * 8192 + c));
            var acc = new float[8192];
            BlockAttention.AccumulateValues(f16, block, 1, [1f], acc);
            for (int c = 0; c < 8192; c++)
                Assert.Equal((float)BitConverter.UInt16BitsToHalf((ushort)(part * 8192 + c)), acc[c]);
        }
        var fp8 = new BlockLayout(KvFormat.Fp8E4M3, QuantAxis.PerToken, 0, 1, 256);
        var codes = Enumerable.Range(0, 256).Select(c => (c & 0x7F) == 0x7F ? (byte)0 : (byte)c).ToArray(); // NaN codes aside
        var acc8 = new float[256];
        BlockAttention.AccumulateValues(fp8, codes, 1, [1f], acc8);
        for (int c = 0; c < 256; c++) Assert.Equal(ScalarFormats.FromFp8E4M3(codes[c]), acc8[c]);
    }

    [Theory]
    [InlineData(4, false)]
    [InlineData(5, false)]
    [InlineData(2, false)]
    [InlineData(5, true)]
    public void QueryGroupEqualsOneCallPerQueryBitForBit(int g, bool scalar)
    {
        using var _ = new ScalarScope(scalar);
        const int d = 128, tokens = 27;
        foreach (var layout in Layouts(32, d))
        {
            var block = Encode(layout, Rows(31, tokens, d), tokens);
            var q = Gaussians(32, g * d, 0.1);
            var scores = new float[g * tokens];
            BlockAttention.Scores(layout, block, tokens, q, g, scores);
            var w = Gaussians(33, g * tokens).Select(MathF.Abs).ToArray();
            var acc0 = Gaussians(34, g * d);
            var acc = (float[])acc0.Clone();
            BlockAttention.AccumulateValues(layout, block, tokens, w, g, acc);
            for (int i = 0; i < g; i++)
            {
                var one = new float[tokens];
                BlockAttention.Scores(layout, block, tokens, q.AsSpan(i * d, d), one);
                Assert.Equal(one, scores.AsSpan(i * tokens, tokens).ToArray());
                var accOne = acc0.AsSpan(i * d, d).ToArray();
                BlockAttention.AccumulateValues(layout, block, tokens, w.AsSpan(i * tokens, tokens), accOne);
                Assert.Equal(accOne, acc.AsSpan(i * d, d).ToArray());
            }
        }
    }

    /// <summary>
    /// F16 blocks take the scaled-widening path (elements read as x·2^-112, 2^112 folded into queries/weights):
    /// subnormal, tiny and extreme elements, queries too large for the full 2^112 fold (rescaled scores) and
    /// weights too large for it (exact fallback) all match float64 over the decoded elements.
    /// </summary>
    [Theory]
    [InlineData(1.0)]
    [InlineData(3e4)]
    [InlineData(1e9)]
    public void F16ScaledPathEqualsFloat64WithExtremeElementsAndQueries(double querySigma)
    {
        const int d = 128, tokens = 32, g = 5;
        var layout = new BlockLayout(KvFormat.F16, QuantAxis.PerToken, 0, tokens, d);
        var rng = new Random(41);
        var x = Rows(40, tokens, d);
        float[] specials = [6e-8f, -3e-5f, 1e-6f, 65504f, -65504f, 6.1e-5f, -0f];
        for (int i = 0; i < x.Length; i += 3) x[i] = specials[rng.Next(specials.Length)] * (i % 2 == 0 ? 1 : 1e-3f);
        var block = Encode(layout, x, tokens);
        var dec = Decode(layout, block, tokens);
        var q = Gaussians(42, g * d, querySigma);
        var scores = new float[g * tokens];
        BlockAttention.Scores(layout, block, tokens, q, g, scores);
        var w = Gaussians(43, g * tokens, querySigma).Select(MathF.Abs).ToArray();
        var acc = new float[g * d];
        BlockAttention.AccumulateValues(layout, block, tokens, w, g, acc);
        for (int i = 0; i < g; i++)
        {
            for (int t = 0; t < tokens; t++)
            {
                double exact = 0, mag = 0;
                for (int c = 0; c < d; c++) { double p = (double)q[i * d + c] * dec[t * d + c]; exact += p; mag += Math.Abs(p); }
                Assert.True(Math.Abs(scores[i * tokens + t] - exact) <= 1e-5 * mag + 1e-30, $"query {i} token {t}: {scores[i * tokens + t]} vs {exact}");
            }
            for (int c = 0; c < d; c++)
            {
                double exact = 0, mag = 0;
                for (int t = 0; t < tokens; t++) { double p = (double)w[i * tokens + t] * dec[t * d + c]; exact += p; mag += Math.Abs(p); }
                Assert.True(Math.Abs(acc[i * d + c] - exact) <= 1e-5 * mag + 1e-30, $"query {i} channel {c}: {acc[i * d + c]} vs {exact}");
            }
        }
    }

    /// <summary>
    /// Every blocking gives every (query, token) the same float operations: a group call (g = 2, 3 — padded to 4 —, 4, 5, 7,
    /// 9 queries, token counts that are not multiples of the 2- and 4-row blockings) equals g one-query calls bit for bit,
    /// scores and accumulators, in every format and axis.
    /// </summary>
    [Theory]
    [InlineData(KvFormat.F32)]
    [InlineData(KvFormat.F16)]
    [InlineData(KvFormat.BF16)]
    [InlineData(KvFormat.Fp8E4M3)]
    [InlineData(KvFormat.Int8)]
    [InlineData(KvFormat.Int4)]
    [InlineData(KvFormat.Int2)]
    [InlineData(KvFormat.Ternary)]
    [InlineData(KvFormat.Binary)]
    public void GroupCallsEqualOneQueryCallsBitForBit(KvFormat format)
    {
        const int d = 64, tokens = 32;
        var layouts = format.IsQuantized()
            ? new[] { BlockLayout.ForKeys(format, d, tokens), BlockLayout.ForValues(format, d, tokens) }
            : new[] { new BlockLayout(format, QuantAxis.PerToken, 0, tokens, d) };
        var x = Rows(60, tokens, d);
        foreach (var layout in layouts)
        {
            var block = Encode(layout, x, tokens);
            foreach (int n in new[] { 32, 31, 7 })
                foreach (int g in new[] { 2, 3, 4, 5, 7, 9 })
                {
                    var q = Gaussians(61 + g, g * d, 1);
                    var w = Gaussians(62 + g, g * n, 1).Select(MathF.Abs).ToArray();
                    var scores = new float[g * n];
                    var acc = Gaussians(63 + g, g * d, 1);
                    var single = (float[])acc.Clone();
                    BlockAttention.Scores(layout, block, n, q, g, scores);
                    BlockAttention.AccumulateValues(layout, block, n, w, g, acc);
                    for (int i = 0; i < g; i++)
                    {
                        var s1 = new float[n];
                        BlockAttention.Scores(layout, block, n, q.AsSpan(i * d, d), s1);
                        Assert.True(s1.AsSpan().SequenceEqual(scores.AsSpan(i * n, n)), $"{layout}, {n} tokens, group {g}: scores of query {i}");
                        BlockAttention.AccumulateValues(layout, block, n, w.AsSpan(i * n, n), single.AsSpan(i * d, d));
                    }
                    Assert.True(single.AsSpan().SequenceEqual(acc), $"{layout}, {n} tokens, group {g}: accumulators");
                }
        }
    }

    /// <summary>An F16 block holding an infinity (|x| > 65504 rounds to inf) keeps IEEE semantics: that token's score and the accumulators it feeds are infinite.</summary>
    [Fact]
    public void F16BlockWithInfinityKeepsIeeeResults()
    {
        const int d = 64, tokens = 8;
        var layout = new BlockLayout(KvFormat.F16, QuantAxis.PerToken, 0, tokens, d);
        var x = Rows(50, tokens, d);
        x[3 * d + 5] = 1e6f; // token 3, channel 5 → +inf
        var block = Encode(layout, x, tokens);
        var q = Enumerable.Repeat(0.5f, d).ToArray();
        var scores = new float[tokens];
        BlockAttention.Scores(layout, block, tokens, q, scores);
        Assert.Equal(float.PositiveInfinity, scores[3]);
        for (int t = 0; t < tokens; t++) if (t != 3) Assert.True(float.IsFinite(scores[t]) && Math.Abs(scores[t]) < 1e3, $"token {t}: {scores[t]}");
        var acc = new float[d];
        BlockAttention.AccumulateValues(layout, block, tokens, Enumerable.Repeat(0.25f, tokens).ToArray(), acc);
        Assert.Equal(float.PositiveInfinity, acc[5]);
        Assert.True(float.IsFinite(acc[4]) && float.IsFinite(acc[6]));
    }

    [Fact]
    public void ShortBuffersAreRejected()
    {
        var layout = BlockLayout.ForKeys(KvFormat.Int4, 64);
        var block = new byte[layout.ByteSize];
        Assert.Throws<ArgumentException>(() => BlockAttention.Scores(layout, block.AsSpan(1), 32, new float[64], new float[32]));
        Assert.Throws<ArgumentException>(() => BlockAttention.Scores(layout, block, 32, new float[63], new float[32]));
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockAttention.Scores(layout, block, 33, new float[64], new float[33]));
        Assert.Throws<ArgumentException>(() => BlockAttention.AccumulateValues(layout, block, 32, new float[32], new float[32]));
    }
}
