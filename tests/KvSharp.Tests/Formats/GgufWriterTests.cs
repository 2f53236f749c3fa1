using System.Text;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Formats.Gguf;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Tests.Formats;

public unsafe class GgufWriterTests
{
    private static string Stories => RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    [Theory]
    [InlineData(32)]
    [InlineData(64)]
    [InlineData(8)]
    public void RoundTripsEveryValueTypeAndAlignedTensors(int alignment)
    {
        using var dir = new TempDir();
        string p = dir.File("rt.gguf");
        var f32 = SafeTensorsFixture.F32(1.5f, -2, 3, 4, 5, 6);
        var q8 = Enumerable.Range(0, 34 * 2).Select(i => (byte)i).ToArray();
        new GgufWriter(alignment)
            .Set("u8", (byte)200).Set("i8", (sbyte)-100).Set("u16", (ushort)60000).Set("i16", (short)-30000)
            .Set("u32", 4000000000u).Set("i32", -2000000000).Set("f32", 0.25f).Set("bool", true)
            .Set("str", "héllo").Set("u64", ulong.MaxValue).Set("i64", long.MinValue).Set("f64", Math.PI)
            .Set("a.u8", new byte[] { 1, 2 }).Set("a.i8", new sbyte[] { -1 }).Set("a.u16", new ushort[] { 7 })
            .Set("a.i16", new short[] { -7 }).Set("a.u32", new uint[] { 9, 10 }).Set("a.i32", new[] { -9 })
            .Set("a.f32", new[] { 1f, 2f }).Set("a.bool", new[] { true, false }).Set("a.str", new[] { "a", "", "ccc" })
            .Set("a.u64", new ulong[] { 1UL << 40 }).Set("a.i64", new long[] { -(1L << 40) }).Set("a.f64", new[] { 0.5 })
            .Set("a.empty", Array.Empty<int>())
            .Set("a.nested", new object[] { new[] { 1, 2 }, new[] { "x" }, new object[] { new byte[] { 3 } } })
            .AddTensor("t.f32", GgmlType.F32, [2, 3], f32)
            .AddTensor("t.q8", GgmlType.Q8_0, [1, 64], q8)
            .AddTensor("t.one", GgmlType.F32, [1], SafeTensorsFixture.F32(9))
            .Write(p);

        using var g = GgufFile.Open(p);
        Assert.Equal(3u, g.Version);
        Assert.Equal(alignment, g.Alignment);
        var m = g.Metadata;
        Assert.Equal((byte)200, m["u8"]);
        Assert.Equal((sbyte)-100, m["i8"]);
        Assert.Equal((ushort)60000, m["u16"]);
        Assert.Equal((short)-30000, m["i16"]);
        Assert.Equal(4000000000u, m["u32"]);
        Assert.Equal(-2000000000, m["i32"]);
        Assert.Equal(0.25f, m["f32"]);
        Assert.Equal(true, m["bool"]);
        Assert.Equal("héllo", m["str"]);
        Assert.Equal(ulong.MaxValue, m["u64"]);
        Assert.Equal(long.MinValue, m["i64"]);
        Assert.Equal(Math.PI, m["f64"]);
        Assert.Equal(new byte[] { 1, 2 }, m["a.u8"]);
        Assert.Equal(new sbyte[] { -1 }, m["a.i8"]);
        Assert.Equal(new ushort[] { 7 }, m["a.u16"]);
        Assert.Equal(new short[] { -7 }, m["a.i16"]);
        Assert.Equal(new uint[] { 9, 10 }, m["a.u32"]);
        Assert.Equal(new[] { -9 }, m["a.i32"]);
        Assert.Equal(new[] { 1f, 2f }, m["a.f32"]);
        Assert.Equal(new[] { true, false }, m["a.bool"]);
        Assert.Equal(new[] { "a", "", "ccc" }, m["a.str"]);
        Assert.Equal(new ulong[] { 1UL << 40 }, m["a.u64"]);
        Assert.Equal(new long[] { -(1L << 40) }, m["a.i64"]);
        Assert.Equal(new[] { 0.5 }, m["a.f64"]);
        Assert.Empty((int[])m["a.empty"]);
        var nested = (object[])m["a.nested"];
        Assert.Equal(new[] { 1, 2 }, nested[0]);
        Assert.Equal(new[] { "x" }, nested[1]);
        Assert.Equal(new byte[] { 3 }, ((object[])nested[2])[0]);

        Assert.Equal(0, g.DataOffset % alignment);
        Assert.Equal(3, g.Tensors.Count);
        var t = g.FindTensor("t.f32")!;
        Assert.Equal(new long[] { 2, 3 }, t.Shape);
        Assert.Equal(f32, t.Bytes.ToArray());
        var q = g.FindTensor("t.q8")!;
        Assert.Equal(GgmlType.Q8_0, q.Type);
        Assert.Equal(q8, q.Bytes.ToArray());
        Assert.Equal(0, (q.Data - t.Data) % alignment);
        Assert.Equal(9f, *(float*)g.FindTensor("t.one")!.Data);
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp")); // the temporary file was renamed away
    }

    [Fact]
    public void HeaderBytesMatchTheSpecByHand()
    {
        using var dir = new TempDir();
        string p = dir.File("h.gguf");
        new GgufWriter().Set("k", (ushort)0x0102).AddTensor("w", GgmlType.F32, [1, 2], SafeTensorsFixture.F32(1, 2)).Write(p);
        var expected = new List<byte>();
        expected.AddRange("GGUF"u8.ToArray());
        expected.AddRange(BitConverter.GetBytes(3u));
        expected.AddRange(BitConverter.GetBytes(1UL)); // tensors
        expected.AddRange(BitConverter.GetBytes(1UL)); // kv
        expected.AddRange(BitConverter.GetBytes(1UL)); expected.Add((byte)'k');
        expected.AddRange(BitConverter.GetBytes(2u)); // UINT16
        expected.AddRange(new byte[] { 0x02, 0x01 });
        expected.AddRange(BitConverter.GetBytes(1UL)); expected.Add((byte)'w');
        expected.AddRange(BitConverter.GetBytes(2u)); // n_dims
        expected.AddRange(BitConverter.GetBytes(2UL)); // ne[0] = innermost
        expected.AddRange(BitConverter.GetBytes(1UL));
        expected.AddRange(BitConverter.GetBytes(0u)); // F32
        expected.AddRange(BitConverter.GetBytes(0UL)); // offset
        while (expected.Count % 32 != 0) expected.Add(0);
        expected.AddRange(SafeTensorsFixture.F32(1, 2));
        Assert.Equal(expected.ToArray(), File.ReadAllBytes(p));
    }

    [Fact]
    public void WriteModelRoundTripsStories260k()
    {
        using var dir = new TempDir();
        string p = dir.File("copy.gguf");
        using var src = ModelLoader.Load(Stories);
        GgufWriter.WriteModel(src, p, Stories);
        using var copy = ModelLoader.Load(p);
        Assert.Equal(src.Config with { EosTokenIds = [] }, copy.Config with { EosTokenIds = [] });
        Assert.Equal(src.Config.EosTokenIds, copy.Config.EosTokenIds);
        Assert.Equal(src.Tensors.Keys.Order(), copy.Tensors.Keys.Order());
        foreach (var (name, t) in src.Tensors) Assert.Equal(t.Bytes.ToArray(), copy.Require(name).Bytes.ToArray());
        using var a = GgufFile.Open(Stories);
        using var b = GgufFile.Open(p);
        foreach (var key in a.Metadata.Keys.Where(k => k.StartsWith("tokenizer.", StringComparison.Ordinal)))
            Assert.Equal(a.Metadata[key], b.Metadata[key]);
    }

    [Fact]
    public void WriteModelRejectsVocabularyOfWrongSize()
    {
        using var dir = new TempDir();
        using var w = DummyWeights.Create(HfConfigReader.Read(RepoPaths.SharedFile("models", "tinystories-656k")), GgmlType.F32, 1);
        var e = Assert.Throws<ModelFormatException>(() => GgufWriter.WriteModel(w, dir.File("x.gguf"), Stories));
        Assert.Contains("512 tokens", e.Message);
        Assert.Contains("2048", e.Message);
        Assert.False(File.Exists(dir.File("x.gguf")));
    }

    [Fact]
    public void WriteModelPermutesHalfSplitQkSoAttentionScoresAreUnchanged()
    {
        using var dir = new TempDir();
        string p = dir.File("ts.gguf");
        using var hf = ModelLoader.Load(RepoPaths.SharedFile("models", "tinystories-656k"));
        GgufWriter.WriteModel(hf, p);
        using var gg = ModelLoader.Load(p);
        Assert.Equal(RopeStyle.HalfSplit, hf.Config.RopeStyle);
        Assert.Equal(RopeStyle.Interleaved, gg.Config.RopeStyle);
        Assert.True(gg.Config.TieEmbeddings);
        Assert.Equal(hf.Config with { RopeStyle = RopeStyle.Interleaved, EosTokenIds = [] }, gg.Config with { EosTokenIds = [] });

        // q.k per head after RoPE must be the same whichever pairing computed it (float64 matvec).
        var c = hf.Config;
        var rng = new Random(5);
        var x = Enumerable.Range(0, c.HiddenSize).Select(_ => rng.NextDouble() - 0.5).ToArray();
        var y = Enumerable.Range(0, c.HiddenSize).Select(_ => rng.NextDouble() - 0.5).ToArray();
        float[] Proj(ModelWeights w, string name, double[] v)
        {
            var t = w.Require(TensorNames.Layer(1, name));
            var o = new float[t.Rows];
            for (int r = 0; r < t.Rows; r++)
            {
                double s = 0;
                for (int k = 0; k < t.Cols; k++) s += ((float*)t.Data)[r * t.Cols + k] * v[k];
                o[r] = (float)s;
            }
            return o;
        }
        double[] Scores(ModelWeights w)
        {
            var rope = new Rope(w.Config);
            var q = Proj(w, TensorNames.Suffix.Q, x);
            var k = Proj(w, TensorNames.Suffix.K, y);
            rope.Apply(q, 37);
            rope.Apply(k, 11);
            var s = new double[c.NumHeads];
            for (int h = 0; h < c.NumHeads; h++)
                for (int i = 0; i < c.HeadDim; i++) s[h] += (double)q[h * c.HeadDim + i] * k[h / c.GroupSize * c.HeadDim + i];
            return s;
        }
        var s1 = Scores(hf);
        var s2 = Scores(gg);
        for (int h = 0; h < c.NumHeads; h++) Assert.Equal(s1[h], s2[h], 4);
        // And the rows really moved (the permutation is not the identity).
        Assert.NotEqual(hf.Require("blk.0.attn_q.weight").Bytes.ToArray(), gg.Require("blk.0.attn_q.weight").Bytes.ToArray());
        Assert.Equal(hf.Require("blk.0.attn_v.weight").Bytes.ToArray(), gg.Require("blk.0.attn_v.weight").Bytes.ToArray());
    }

    [Fact]
    public void WriteModelStoresLlama3ScalingAsRopeFreqs()
    {
        using var dir = new TempDir();
        string p = dir.File("l3.gguf");
        var config = new ModelConfig
        {
            Architecture = "llama",
            VocabSize = 64,
            HiddenSize = 256,
            IntermediateSize = 64,
            NumLayers = 1,
            NumHeads = 2,
            NumKvHeads = 1,
            HeadDim = 128,
            RopeTheta = 500000,
            RopeStyle = RopeStyle.Interleaved,
            RopeScaling = new Llama3RopeScaling(8, 1, 4, 8192),
            MaxContext = 131072,
        };
        using var w = DummyWeights.Create(config, GgmlType.Q8_0, 2);
        GgufWriter.WriteModel(w, p);
        using var g = GgufFile.Open(p);
        var freqs = g.FindTensor("rope_freqs.weight")!;
        Assert.Equal(new long[] { 64 }, freqs.Shape);
        // Hand-checked ends: the highest frequency is untouched, the lowest divided by the factor 8.
        Assert.Equal(1f, ((float*)freqs.Data)[0]);
        Assert.Equal(8f, ((float*)freqs.Data)[63]);
        var read = GgufConfigReader.Read(g);
        Assert.Equal(config.RopeScaling, read.RopeScaling);
        Assert.Equal(config with { EosTokenIds = [] }, read with { EosTokenIds = [] });
    }

    [Fact]
    public void WriteModelWidensBf16VectorsToF32()
    {
        using var dir = new TempDir();
        string p = dir.File("needle.gguf");
        using var hf = ModelLoader.Load(RepoPaths.SharedFile("models", "kvsharp-needle-16m"));
        GgufWriter.WriteModel(hf, p);
        using var gg = ModelLoader.Load(p);
        var src = hf.Require("blk.2.ffn_norm.weight");
        var dst = gg.Require("blk.2.ffn_norm.weight");
        Assert.Equal(GgmlType.BF16, src.Type);
        Assert.Equal(GgmlType.F32, dst.Type);
        for (int i = 0; i < 384; i++)
            Assert.Equal(BitConverter.Int32BitsToSingle(((ushort*)src.Data)[i] << 16), ((float*)dst.Data)[i]);
        Assert.Equal(GgmlType.BF16, gg.Require("blk.2.ffn_up.weight").Type); // matrices keep their type
        Assert.Equal(hf.ParameterCount, gg.ParameterCount);
    }
}
