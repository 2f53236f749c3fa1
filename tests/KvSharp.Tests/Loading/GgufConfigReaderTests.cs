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
        Assert.Null(Llama3Scaling.FromFactors(Enumerable.Repeat(1.0, 64).ToArray(), 500000, 128, 8192));
    }
}
