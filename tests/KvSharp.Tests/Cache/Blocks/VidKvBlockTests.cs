using KvSharp.Cache.Blocks;
using static KvSharp.Tests.Cache.Blocks.BlockTestData;

namespace KvSharp.Tests.Cache.Blocks;

/// <summary>VidKV block formats against <see cref="VidKvReference"/> (float64, from the definition) and hand-worked cases.</summary>
public class VidKvBlockTests
{
    [Fact]
    public void ByteSizesAreTheAreasOfTheLayout()
    {
        // Keys 32×64, 32 outliers: mask 8 + 2-bit codes 32·32/4 = 256 + sign bits 32·32/8 = 128 + 4 f16 per channel 256.
        var k = BlockLayout.ForKeys(KvFormat.VidKvKey, 64);
        Assert.Equal(32, k.GroupSize);
        Assert.Equal(8 + 256 + 128 + 256, k.ByteSize);
        // Values 32×64, 2 salient: mask 4 + trits ⌈2048/5⌉ = 410 + Int4 rows 2·32 + f16 channel scales 128 + 2·(scale, min) 8.
        var v = BlockLayout.ForValues(KvFormat.VidKvValue, 64);
        Assert.Equal(2, v.GroupSize);
        Assert.Equal(4 + 410 + 64 + 128 + 8, v.ByteSize);
        Assert.Equal(1.5, (8.0 * (k.CodeBytes - 8)) / (32 * 64), 12); // the codes alone: 1.5 bits per key element
    }

    [Fact]
    public void BadVidKvLayoutsAreRejectedWithTheProblemNamed()
    {
        Assert.Contains("outlier", Assert.Throws<KvSharpException>(() => new BlockLayout(KvFormat.VidKvKey, QuantAxis.PerChannel, 65, 32, 64)).Message);
        Assert.Contains("salient", Assert.Throws<KvSharpException>(() => new BlockLayout(KvFormat.VidKvValue, QuantAxis.PerChannel, 33, 32, 64)).Message);
        Assert.Contains("256", Assert.Throws<KvSharpException>(() => BlockLayout.ForKeys(KvFormat.VidKvKey, 64, 512)).Message);
        var layout = BlockLayout.ForKeys(KvFormat.VidKvKey, 64);
        var e = Assert.Throws<KvSharpException>(() => BlockCodec.EncodeRows(layout, new float[64], 3, 1, new byte[layout.ByteSize]));
        Assert.Contains("encoded whole", e.Message);
        Assert.Equal(KvFormat.VidKvKey, KvFormatInfo.Parse("vidkv-key"));
        Assert.Equal(KvFormat.VidKvValue, KvFormatInfo.Parse("VidKvValue"));
    }

    [Fact]
    public void BasisIsTheOrthonormalRealDftOfTheComplexFft()
    {
        foreach (int n in new[] { 1, 2, 5, 8, 13, 32 })
        {
            var x = Gaussians(n, n).Select(v => (double)v).ToArray();
            var y = VidKvReference.Forward(x);
            var back = VidKvReference.Inverse(y);
            for (int t = 0; t < n; t++) Assert.Equal(x[t], back[t], 10);
            Assert.Equal(x.Sum(v => v * v), y.Sum(v => v * v), 9); // Parseval: orthonormal
            // A VidKvKey block with no outlier channel and a constant-magnitude spectrum reproduces x up to f16 rounding:
            // its coefficients ±1 have mean |y| = 1, so the 1-bit code is exact.
            if (n < 2) continue;
            var spectrum = Enumerable.Range(0, n).Select(j => j == 0 ? 0.0 : j % 3 == 0 ? -1.0 : 1.0).ToArray();
            var signal = VidKvReference.Inverse(spectrum);
            var rows = new float[n * 8];
            for (int t = 0; t < n; t++) for (int c = 0; c < 8; c++) rows[t * 8 + c] = (float)signal[t];
            var layout = new BlockLayout(KvFormat.VidKvKey, QuantAxis.PerChannel, 0, 32, 8);
            var decoded = Decode(layout, Encode(layout, rows, n), n);
            for (int e = 0; e < n * 8; e++) Assert.True(Math.Abs(decoded[e] - rows[e]) < 2e-3, $"n={n} element {e}: {decoded[e]} vs {rows[e]}");
        }
    }

    [Fact]
    public void TwoTokenKeyChannelIsMeanPlusMinusHalfDifference()
    {
        // n = 2: φ1 = (1, −1)/√2, so x = (3, 1) has mean 2, y1 = √2, scale = f16(√2) = 1.4140625, sign +: x̂ = 2 ± 1.4140625/√2.
        var layout = new BlockLayout(KvFormat.VidKvKey, QuantAxis.PerChannel, 0, 32, 8);
        var rows = new float[16];
        for (int c = 0; c < 8; c++) { rows[c] = 3; rows[8 + c] = 1; }
        var block = Encode(layout, rows, 2);
        Assert.Equal(0, block[0]);                       // no outlier channel
        Assert.Equal(0xFF, block[1 + 1]);                // sign bits of coefficient 1 for the 8 channels (row 0 unused)
        Assert.Equal(0, block[1]);
        var x = Decode(layout, block, 2);
        Assert.Equal(2 + 1.4140625 / Math.Sqrt(2), x[0], 6);
        Assert.Equal(2 - 1.4140625 / Math.Sqrt(2), x[8], 6);
    }

    public static TheoryData<int, int, int> KeyCases() => new()
    {
        { 64, 32, 32 }, { 64, 32, 13 }, { 64, 0, 32 }, { 64, 64, 32 }, { 8, 4, 32 }, { 8, 4, 1 }, { 16, 5, 7 },
    };

    [Theory]
    [MemberData(nameof(KeyCases))]
    public void KeyBlockBytesAndDecodeMatchTheFloat64Reference(int d, int m, int n)
    {
        var layout = new BlockLayout(KvFormat.VidKvKey, QuantAxis.PerChannel, m, 32, d);
        var x = Rows(100 + d + m + n, n, d);
        var block = Encode(layout, x, n);
        var (bytes, decoded, _) = VidKvReference.Keys(32, d, m, x, n);
        Assert.Equal(bytes.Length, layout.ByteSize);
        Assert.Equal(bytes, block);
        var got = Decode(layout, block, n);
        for (int e = 0; e < n * d; e++) Assert.True(Math.Abs(got[e] - decoded[e]) <= 1e-5 * (1 + Math.Abs(decoded[e])), $"element {e}: {got[e]} vs {decoded[e]}");
    }

    [Fact]
    public void OutlierChannelsAreTheWidestRanges()
    {
        var x = Rows(7, 32, 16);
        for (int t = 0; t < 32; t++) { x[t * 16 + 3] *= 50; x[t * 16 + 11] += t % 2 == 0 ? 40 : -40; }
        var layout = new BlockLayout(KvFormat.VidKvKey, QuantAxis.PerChannel, 2, 32, 16);
        var block = Encode(layout, x, 32);
        Assert.Equal(1 << 3, block[0]);
        Assert.Equal(1 << (11 - 8), block[1]);
    }

    public static TheoryData<int, int, int> ValueCases() => new()
    {
        { 64, 2, 32 }, { 64, 2, 13 }, { 64, 0, 32 }, { 8, 2, 32 }, { 8, 4, 3 }, { 16, 32, 32 },
    };

    [Theory]
    [MemberData(nameof(ValueCases))]
    public void ValueBlockBytesAndDecodeMatchTheFloat64Reference(int d, int s, int n)
    {
        var layout = new BlockLayout(KvFormat.VidKvValue, QuantAxis.PerChannel, s, 32, d);
        var x = Rows(200 + d + s + n, n, d);
        var block = Encode(layout, x, n);
        var (bytes, decoded, _) = VidKvReference.Values(32, d, s, x, n);
        Assert.Equal(bytes.Length, layout.ByteSize);
        Assert.Equal(bytes, block);
        var got = Decode(layout, block, n);
        for (int e = 0; e < n * d; e++) Assert.Equal(decoded[e], got[e], 5);
    }

    [Fact]
    public void SalientTokensAreTheOnesTernaryHurtsMost()
    {
        var x = Rows(9, 32, 8);
        for (int c = 0; c < 8; c++) { x[5 * 8 + c] = 30 + c; x[20 * 8 + c] = -25; }
        var layout = new BlockLayout(KvFormat.VidKvValue, QuantAxis.PerChannel, 2, 32, 8);
        var block = Encode(layout, x, 32);
        Assert.Equal(new byte[] { 1 << 5, 0, 1 << (20 - 16), 0 }, block[..4]);
        var got = Decode(layout, block, 32);
        for (int c = 0; c < 8; c++) Assert.True(Math.Abs(got[5 * 8 + c] - x[5 * 8 + c]) < 0.3, $"salient row kept at Int4: {got[5 * 8 + c]} vs {x[5 * 8 + c]}");
    }

    // Outlier channels m: the default half, none, all, and an odd count (gathers of 8 plus a remainder); salient tokens
    // s: the default 2, none, and more than 8; groups of 1, 3, 4 and 6 queries (the 4-query kernels plus a remainder).
    [Theory]
    [InlineData(32, 1, -1, -1)]
    [InlineData(32, 4, -1, -1)]
    [InlineData(13, 3, -1, -1)]
    [InlineData(32, 6, 0, 0)]
    [InlineData(32, 4, 64, 9)]
    [InlineData(7, 6, 13, 2)]
    public void DecodeAttentionOverVidKvBlocksEqualsFloat64AttentionOverTheReference(int lastBlock, int g, int outliers, int salient)
    {
        const int d = 64;
        var kl = outliers < 0 ? BlockLayout.ForKeys(KvFormat.VidKvKey, d) : new BlockLayout(KvFormat.VidKvKey, QuantAxis.PerChannel, outliers, 32, d);
        var vl = salient < 0 ? BlockLayout.ForValues(KvFormat.VidKvValue, d) : new BlockLayout(KvFormat.VidKvValue, QuantAxis.PerChannel, salient, 32, d);
        int[] counts = [32, 32, lastBlock];
        var keyBlocks = new List<KvBlock>();
        var valueBlocks = new List<KvBlock>();
        var refK = new List<double>();
        var refV = new List<double>();
        for (int b = 0; b < counts.Length; b++)
        {
            var k = Rows(300 + b, counts[b], d);
            var v = Rows(400 + b, counts[b], d);
            keyBlocks.Add(new KvBlock(kl, Encode(kl, k, counts[b]), counts[b]));
            valueBlocks.Add(new KvBlock(vl, Encode(vl, v, counts[b]), counts[b]));
            refK.AddRange(VidKvReference.Keys(32, d, kl.GroupSize, k, counts[b]).Decoded);
            refV.AddRange(VidKvReference.Values(32, d, vl.GroupSize, v, counts[b]).Decoded);
        }
        int total = counts.Sum();
        var q = Gaussians(500 + g, g * d, 1 / Math.Sqrt(d));
        var state = new OnlineSoftmax(g, d);
        var output = new float[g * d];
        BlockDecodeAttention.Attend(keyBlocks, valueBlocks, q, g, state, output);
        for (int i = 0; i < g; i++)
        {
            var s = Enumerable.Range(0, total).Select(t => Enumerable.Range(0, d).Sum(c => (double)q[i * d + c] * refK[t * d + c])).ToArray();
            double max = s.Max(), z = s.Sum(v => Math.Exp(v - max));
            for (int c = 0; c < d; c++)
            {
                double o = Enumerable.Range(0, total).Sum(t => Math.Exp(s[t] - max) / z * refV[t * d + c]);
                Assert.True(Math.Abs(output[i * d + c] - o) < 1e-4 * (1 + Math.Abs(o)), $"query {i} channel {c}: {output[i * d + c]} vs {o}");
            }
        }
    }
}
