using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Formats.Gguf;
using KvSharp.Generation;
using KvSharp.Models.Loading;

namespace KvSharp.Tests.Loading;

public class WeightConverterTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    [Theory]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.Q8_0)]
    public void ConvertedMatricesStayWithinTheTypesStepAndVectorsBecomeF32(GgmlType type)
    {
        using var source = ModelLoader.Load(Stories);
        using var converted = WeightConverter.Convert(source, type);
        foreach (var (name, t) in source.Tensors)
        {
            var c = converted.Require(name);
            Assert.Equal(t.Shape, c.Shape);
            bool matrix = t.Shape.Length >= 2 && t.Cols % GgmlTypeInfo.BlockSize(type) == 0;
            Assert.Equal(matrix ? type : GgmlType.F32, c.Type);
            var a = new float[t.Cols];
            var b = new float[t.Cols];
            for (long r = 0; r < t.Rows; r++)
            {
                Dequantize.Row(t, r, a);
                Dequantize.Row(c, r, b);
                for (int blk = 0; blk < a.Length; blk += 32)
                {
                    int n = Math.Min(32, a.Length - blk);
                    double amax = 0;
                    for (int i = 0; i < n; i++) amax = Math.Max(amax, Math.Abs(a[blk + i]));
                    // Q8_0: half a step of amax/127 (+ f16 rounding of the scale); F16: 2^-11 relative (+ subnormal spacing).
                    double bound = c.Type switch
                    {
                        GgmlType.Q8_0 => amax / 127 * 0.5 * 1.01 + amax * 1e-3,
                        GgmlType.F16 => amax * Math.Pow(2, -11) + 6e-8,
                        _ => 0,
                    };
                    for (int i = 0; i < n; i++)
                        Assert.True(Math.Abs(a[blk + i] - b[blk + i]) <= bound, $"{name}[{r},{blk + i}]: {a[blk + i]} -> {b[blk + i]}");
                }
            }
        }
    }

    [Fact]
    public void ModelWithoutVocabularyGetsALoadablePlaceholderVocabulary()
    {
        using var dir = new TempDir();
        using var source = ModelLoader.Load(Stories);
        string path = dir.File("novocab.gguf");
        GgufWriter.WriteModel(source, path); // no vocabulary file given
        using (var gguf = GgufFile.Open(path))
        {
            Assert.Equal("llama", gguf.Require<string>("tokenizer.ggml.model"));
            var tokens = gguf.Require<string[]>("tokenizer.ggml.tokens");
            Assert.Equal(source.Config.VocabSize, tokens.Length);
            Assert.Equal(tokens.Length, tokens.Distinct().Count());
            Assert.Equal("<0x41>", tokens[3 + 0x41]);
        }
        using var model = LanguageModel.Load(path);
        // Byte fallback makes any text encodable; the ids are valid for the model.
        var ids = model.Encode("AB", addBos: false);
        Assert.All(ids, id => Assert.InRange(id, 0, source.Config.VocabSize - 1));
        Assert.Equal("AB", model.Tokenizer.Decode(ids));
    }
}
