using KvSharp.Cache.Blocks;
using static KvSharp.Tests.Cache.Blocks.BlockTestData;

namespace KvSharp.Tests.Cache.Blocks;

public class BlockDecodeAttentionTests
{
    private const int D = 128;

    /// <summary>Key/value layouts of a head that mixes formats across its blocks, and the tokens each block holds.</summary>
    private static readonly (BlockLayout Key, BlockLayout Value, int Tokens)[] Mixed =
    [
        (BlockLayout.ForKeys(KvFormat.Int2, D), BlockLayout.ForValues(KvFormat.Int2, D), 32),
        (BlockLayout.ForKeys(KvFormat.Binary, D), BlockLayout.ForValues(KvFormat.Ternary, D), 32),
        (BlockLayout.ForKeys(KvFormat.Int4, D), BlockLayout.ForValues(KvFormat.Int8, D, channelGroup: 64), 32),
        (BlockLayout.ForKeys(KvFormat.Fp8E4M3, D), BlockLayout.ForValues(KvFormat.BF16, D), 32),
        (new BlockLayout(KvFormat.Int8, QuantAxis.PerToken, 32, 32, D), new BlockLayout(KvFormat.Int4, QuantAxis.PerChannel, 8, 32, D), 32),
        (BlockLayout.ForKeys(KvFormat.F16, D), BlockLayout.ForValues(KvFormat.F32, D), 17), // the partial residual block
    ];

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public void MixedFormatDecodeEqualsFloat64SoftmaxOverDecodedKeysAndValues(int g)
    {
        var keys = new List<KvBlock>();
        var values = new List<KvBlock>();
        var kAll = new List<float>();
        var vAll = new List<float>();
        for (int j = 0; j < Mixed.Length; j++)
        {
            var (kl, vl, n) = Mixed[j];
            var kb = Encode(kl, Rows(100 + j, n, D), n);
            var vb = Encode(vl, Rows(200 + j, n, D), n);
            keys.Add(new KvBlock(kl, kb, n));
            values.Add(new KvBlock(vl, vb, n));
            kAll.AddRange(Decode(kl, kb, n));
            vAll.AddRange(Decode(vl, vb, n));
        }
        // Scores of a few units so the softmax is neither flat nor one-hot.
        var q = Gaussians(7, g * D, 1.0 / Math.Sqrt(D));
        var output = new float[g * D];
        var state = new OnlineSoftmax(g, D);
        BlockDecodeAttention.Attend(keys, values, q, g, state, output);

        int total = kAll.Count / D;
        for (int i = 0; i < g; i++)
        {
            var s = new double[total];
            for (int t = 0; t < total; t++)
                for (int c = 0; c < D; c++) s[t] += (double)q[i * D + c] * kAll[t * D + c];
            double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
            var p = s.Select(x => Math.Exp(x - max) / sum).ToArray();
            Assert.True(p.Max() < 0.9 && p.Max() > 2.0 / total, $"softmax should be neither flat nor one-hot, max p = {p.Max()}");
            for (int c = 0; c < D; c++)
            {
                double exact = 0, mag = 0;
                for (int t = 0; t < total; t++) { exact += p[t] * vAll[t * D + c]; mag += p[t] * Math.Abs(vAll[t * D + c]); }
                Assert.True(Math.Abs(output[i * D + c] - exact) <= 1e-5 * mag, $"query {i} channel {c}: {output[i * D + c]} vs {exact}");
            }
            Assert.Equal(Math.Log(s.Sum(Math.Exp)), state.LogSumExp(i), 4);
        }
    }

    [Fact]
    public void MaskedScoresGetZeroWeightAndFullyMaskedBlocksAreHarmless()
    {
        const int d = 8;
        var state = new OnlineSoftmax(1, d);
        var layout = new BlockLayout(KvFormat.F32, QuantAxis.PerToken, 0, 2, d);
        float[] v1 = [1, 1, 1, 1, 1, 1, 1, 1, 5, 5, 5, 5, 5, 5, 5, 5];
        float[] v2 = [3, 3, 3, 3, 3, 3, 3, 3, 9, 9, 9, 9, 9, 9, 9, 9];
        var b1 = Encode(layout, v1, 2);
        var b2 = Encode(layout, v2, 2);
        float[] masked = [float.NegativeInfinity, float.NegativeInfinity];
        state.Absorb(masked, 2);
        BlockAttention.AccumulateValues(layout, b1, 2, masked, state.Accumulators);
        float[] s2 = [MathF.Log(3), float.NegativeInfinity]; // only token 0 of block 2, weight 3
        state.Absorb(s2, 2);
        BlockAttention.AccumulateValues(layout, b2, 2, s2, state.Accumulators);
        float[] s3 = [0f, float.NegativeInfinity]; // token 0 of block 1 again, weight 1
        state.Absorb(s3, 2);
        BlockAttention.AccumulateValues(layout, b1, 2, s3, state.Accumulators);
        var output = new float[d];
        state.Finish(output);
        // (3·3 + 1·1) / 4 = 2.5
        Assert.All(output, o => Assert.Equal(2.5f, o, 5));
    }
}
