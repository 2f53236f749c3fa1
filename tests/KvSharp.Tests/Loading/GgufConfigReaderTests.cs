using KvSharp.Formats;
using KvSharp.Formats.Gguf;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Tests.Loading;

public class GgufConfigReaderTests
{
    [Fact]
    public void Stories260kConfig()
    {
        using var f = GgufFile.Open(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        var c = GgufConfigReader.Read(f);
        Assert.Equal("llama", c.Architecture);
        Assert.Equal(64, c.HiddenSize);
        Assert.Equal(172, c.IntermediateSize);
        Assert.Equal(5, c.NumLayers);
        Assert.Equal(8, c.NumHeads);
        Assert.Equal(4, c.NumKvHeads);
        Assert.Equal(8, c.HeadDim);
        Assert.Equal(512, c.VocabSize);
        Assert.Equal(512, c.MaxContext);
        Assert.Equal(1e-5f, c.RmsNormEps, 1e-9f);
        Assert.Equal(10000.0, c.RopeTheta);
        Assert.Equal(RopeStyle.Interleaved, c.RopeStyle);
        Assert.True(c.TieEmbeddings); // no output.weight stored
        Assert.False(c.AttentionBias);
        Assert.False(c.QkNorm);
        Assert.Null(c.RopeScaling);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
    }

    [Fact]
    public void Llama3FactorsRoundTripThroughTheFit()
    {
        // Llama-3.1-8B: theta 500000, head dim 128, factor 8, low 1, high 4, original 8192.
        var s = new Llama3RopeScaling(8, 1, 4, 8192);
        var divisors = Llama3Scaling.Factors(s, 500000, 128).Select(d => (double)(float)d).ToArray();
        Assert.Equal(s, Llama3Scaling.FromFactors(divisors, 500000, 128, 8192));
        // Independent spot values: the first frequency is untouched and the last is fully scaled.
        Assert.Equal(1.0, divisors[0]);
        Assert.Equal(8.0, divisors[^1]);
        // Transition band, computed by hand in Python from Meta's formula (wavelengths 2048..8192).
        Assert.Equal(1.0, divisors[28]);
        Assert.Equal(1.207483871283662, divisors[29], 6);
        Assert.Equal(2.6945296878947333, divisors[32], 6);
        Assert.Equal(5.257326588708467, divisors[34], 6);
        Assert.Equal(8.0, divisors[35]);
        Assert.Null(Llama3Scaling.FromFactors(Enumerable.Repeat(1.0, 64).ToArray(), 500000, 128, 8192));
    }

    [Theory]
    [InlineData("qwen2", true, false)]
    [InlineData("qwen3", false, true)]
    [InlineData("mistral", false, false)]
    public void QwenAndMistralThroughGguf(string arch, bool bias, bool qkNorm)
    {
        using var dir = new TempDir();
        var config = new ModelConfig
        {
            Architecture = arch,
            VocabSize = 32,
            HiddenSize = 64,
            IntermediateSize = 96,
            NumLayers = 2,
            NumHeads = 4,
            NumKvHeads = 2,
            HeadDim = 16,
            AttentionBias = bias,
            QkNorm = qkNorm,
            TieEmbeddings = true,
            RopeTheta = 1e6,
            RmsNormEps = 1e-6f,
            MaxContext = 4096,
            BosTokenId = 3,
        };
        using var w = DummyWeights.Create(config, GgmlType.F16, 4);
        string p = dir.File("m.gguf");
        GgufWriter.WriteModel(w, p);
        using var loaded = ModelLoader.Load(p);
        var c = loaded.Config;
        Assert.Equal(arch == "mistral" ? "llama" : arch, c.Architecture);
        Assert.Equal(bias, c.AttentionBias);
        Assert.Equal(qkNorm, c.QkNorm);
        Assert.Equal(arch == "mistral" ? RopeStyle.Interleaved : RopeStyle.HalfSplit, c.RopeStyle);
        Assert.True(c.TieEmbeddings);
        Assert.Equal(1e6, c.RopeTheta);
        Assert.Equal(1e-6f, c.RmsNormEps);
        Assert.Equal(4096, c.MaxContext);
        Assert.Equal(3, c.BosTokenId);
        Assert.Equal(16, c.HeadDim);
    }

    [Fact]
    public void UnknownArchitectureListsSupported()
    {
        using var dir = new TempDir();
        string p = dir.File("gpt2.gguf");
        new GgufWriter().Set("general.architecture", "gpt2").Write(p);
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(p));
        Assert.Contains(p, e.Message);
        Assert.Contains("'gpt2'", e.Message);
        Assert.Contains("qwen3", e.Message);
    }

    [Fact]
    public void MissingTensorInGgufIsNamed()
    {
        using var dir = new TempDir();
        using var src = ModelLoader.Load(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        var w = new GgufWriter();
        using (var g = GgufFile.Open(src.Source))
        {
            foreach (var (k, v) in g.Metadata) w.Set(k, v);
            foreach (var t in g.Tensors.Where(t => t.Name != "blk.3.ffn_up.weight")) w.AddTensor(t);
            w.Write(dir.File("m.gguf"));
        }
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.File("m.gguf")));
        Assert.Contains("blk.3.ffn_up.weight", e.Message);
        Assert.Contains("[172, 64]", e.Message);
    }

    [Fact]
    public void OutOfRangeMetadataIsAFormatError()
    {
        using var dir = new TempDir();
        var w = new GgufWriter();
        using (var g = GgufFile.Open(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf")))
        {
            foreach (var (k, v) in g.Metadata) w.Set(k, v);
            w.Set("llama.block_count", 1UL << 40).Set("llama.attention.head_count", -3);
            foreach (var t in g.Tensors) w.AddTensor(t);
            w.Write(dir.File("m.gguf"));
        }
        using var bad = GgufFile.Open(dir.File("m.gguf"));
        var e = Assert.Throws<ModelFormatException>(() => GgufConfigReader.Read(bad));
        Assert.Contains(dir.File("m.gguf"), e.Message);
        Assert.Matches("llama\\.(block_count|attention\\.head_count)", e.Message);
    }
}
