using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Tests.Loading;

public unsafe class DummyWeightsTests
{
    private static readonly ModelConfig Config = new()
    {
        Architecture = "qwen3",
        VocabSize = 96,
        HiddenSize = 64,
        IntermediateSize = 160,
        NumLayers = 2,
        NumHeads = 4,
        NumKvHeads = 2,
        HeadDim = 32,
        QkNorm = true,
        AttentionBias = true,
    };

    private static byte[] Bytes(TensorView t) => t.Bytes.ToArray();

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.Q4_0)]
    public void SameSeedSameBytesDifferentSeedDifferentBytes(GgmlType type)
    {
        using var a = DummyWeights.Create(Config, type, 7);
        using var c = DummyWeights.Create(Config, type, 8);
        ModelWeights b;
        DummyWeights.MaxThreads = 1; // one thread must give the same bytes as many
        try { b = DummyWeights.Create(Config, type, 7); }
        finally { DummyWeights.MaxThreads = null; }
        using (b)
        {
            Assert.Equal(a.Tensors.Keys.Order(), b.Tensors.Keys.Order());
            foreach (var (name, t) in a.Tensors)
            {
                Assert.Equal(Bytes(t), Bytes(b.Require(name)));
                Assert.NotEqual(Bytes(t), Bytes(c.Require(name)));
                Assert.Equal(0, (long)t.Data % 64);
            }
        }
        WeightValidator.Validate(a.Config, a.Tensors, a.Source);
        Assert.NotNull(a.Find(TensorNames.Output)); // the config is untied
    }

    [Fact]
    public void DistributionLooksLikeTheInitializer()
    {
        using var w = DummyWeights.Create(Config with { VocabSize = 4096 }, GgmlType.F32, 1);
        var e = w.Require(TensorNames.TokenEmbedding);
        var v = new ReadOnlySpan<float>(e.Data, (int)e.ElementCount);
        double mean = 0, sq = 0;
        foreach (var x in v) { mean += x; sq += (double)x * x; }
        mean /= v.Length;
        double std = Math.Sqrt(sq / v.Length - mean * mean);
        Assert.InRange(mean, -0.001, 0.001);
        Assert.InRange(std, 0.019, 0.021);
        var norm = w.Require(TensorNames.Layer(1, TensorNames.Suffix.FfnNorm));
        for (int i = 0; i < 64; i++) Assert.InRange(((float*)norm.Data)[i], 0.94f, 1.06f);
    }

    [Fact]
    public void Q8_0DummyDequantizesCloseToItsSourceFloats()
    {
        // Same seed: the generator draws the same floats whatever the storage type.
        using var f = DummyWeights.Create(Config, GgmlType.F32, 3);
        using var q = DummyWeights.Create(Config, GgmlType.Q8_0, 3);
        var src = f.Require("blk.1.ffn_up.weight");
        var qt = q.Require("blk.1.ffn_up.weight");
        Assert.Equal(GgmlType.Q8_0, qt.Type);
        var row = new float[src.Cols];
        for (long r = 0; r < src.Rows; r++)
        {
            Dequantize.Row(qt, r, row);
            var s = new ReadOnlySpan<float>((float*)src.Data + r * src.Cols, (int)src.Cols);
            for (int b = 0; b < row.Length; b += 32)
            {
                float amax = 0;
                for (int i = 0; i < 32; i++) amax = Math.Max(amax, Math.Abs(s[b + i]));
                for (int i = 0; i < 32; i++) Assert.True(Math.Abs(row[b + i] - s[b + i]) <= amax / 127 * 0.5 + 1e-3 * amax, $"row {r} col {b + i}");
            }
        }
    }

    [Fact]
    public void Q8_0AndQ4_0BlocksMatchHandComputedValues()
    {
        var x = Enumerable.Range(0, 32).Select(i => (float)(i - 16)).ToArray();
        var blk = new byte[34];
        Quantize.Row(GgmlType.Q8_0, x, blk);
        Assert.Equal((Half)(16f / 127), BitConverter.ToHalf(blk, 0));
        Assert.Equal(-127, (sbyte)blk[2]);      // -16 * 127/16
        Assert.Equal(-119, (sbyte)blk[3]);      // -15 * 7.9375 = -119.06
        Assert.Equal(0, (sbyte)blk[2 + 16]);
        Assert.Equal(119, (sbyte)blk[2 + 31]);  // 15 * 7.9375

        var b4 = new byte[18];
        Quantize.Row(GgmlType.Q4_0, x, b4);
        Assert.Equal((Half)2f, BitConverter.ToHalf(b4, 0)); // largest magnitude -16, d = -16 / -8
        Assert.Equal(0x80, b4[2]);  // x0=-16 -> 0, x16=0 -> 8
        Assert.Equal(0xF8, b4[2 + 15]); // x15=-1 -> trunc(-0.5+8.5)=8, x31=15 -> min(15, trunc(16)) = 15
    }

    [Fact]
    public void RowsNotMultipleOf32StayF32()
    {
        var c = Config with { IntermediateSize = 172 };
        using var w = DummyWeights.Create(c, GgmlType.Q8_0, 1);
        Assert.Equal(GgmlType.F32, w.Require("blk.0.ffn_down.weight").Type); // rows of 172
        Assert.Equal(GgmlType.Q8_0, w.Require("blk.0.ffn_up.weight").Type);  // rows of 64
    }

    [Fact]
    public void AnyConfigJsonWorks()
    {
        var c = HfConfigReader.Read(RepoPaths.SharedFile("models", "tinystories-656k"));
        using var w = DummyWeights.Create(c, GgmlType.BF16, 0);
        // 2048x128 embedding, final norm, and per layer 4 norms/attention matrices and 3 MLP matrices.
        Assert.Equal(2048 * 128 + 128 + 2 * (2 * 128 + 128 * 128 * 2 + 64 * 128 * 2 + 3 * 384 * 128), w.ParameterCount);
        Assert.StartsWith("dummy:", w.Source);
        Assert.Null(w.Find(TensorNames.Output)); // tied: the transformer reuses token_embd
    }
}
