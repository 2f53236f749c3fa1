using KvSharp.Formats;
using KvSharp.Models;

namespace KvSharp.Tests.Reference;

/// <summary>The random-model generator and structural properties of the oracle (GQA sharing, causality).</summary>
public sealed class ReferenceModelsTests
{
    /// <summary>The engine's tensors decode to exactly the oracle's values, and the tensor set matches the variant.</summary>
    [Theory]
    [MemberData(nameof(ReferenceModels.RandomConfigNames), MemberType = typeof(ReferenceModels))]
    public void RandomModel_EngineAndOracleSeeTheSameWeights(string name)
    {
        var config = ReferenceModels.RandomConfig(name);
        foreach (var type in new[] { GgmlType.F32, GgmlType.F16, GgmlType.BF16 })
        {
            using var model = ReferenceModels.CreateRandom(config, seed: 3, linearType: type);
            var decoded = ReferenceWeights.FromModelWeights(model.Weights);
            Assert.Equal(model.Tensors.Keys.Order(), model.Weights.Tensors.Keys.Order());
            foreach (var (tensor, values) in model.Tensors) Assert.Equal(values, decoded(tensor));
            Assert.Equal(type, model.Weights.Require(TensorNames.Layer(0, TensorNames.Suffix.Q)).Type);
            Assert.Equal(GgmlType.F32, model.Weights.Require(TensorNames.OutputNorm).Type);

            Assert.Equal(!config.TieEmbeddings, model.Weights.Find(TensorNames.Output) is not null);
            Assert.Equal(config.AttentionBias, model.Weights.Find(TensorNames.Layer(0, TensorNames.Suffix.QBias)) is not null);
            Assert.Equal(config.QkNorm, model.Weights.Find(TensorNames.Layer(0, TensorNames.Suffix.KNorm)) is not null);
            var q = model.Weights.Require(TensorNames.Layer(config.NumLayers - 1, TensorNames.Suffix.Q));
            Assert.Equal([config.NumHeads * config.HeadDim, config.HiddenSize], q.Shape);
            var down = model.Weights.Require(TensorNames.Layer(0, TensorNames.Suffix.FfnDown));
            Assert.Equal([config.HiddenSize, config.IntermediateSize], down.Shape);
        }
    }

    /// <summary>Random models give finite, non-degenerate logits (a useful test signal), deterministically per seed.</summary>
    [Theory]
    [MemberData(nameof(ReferenceModels.RandomConfigNames), MemberType = typeof(ReferenceModels))]
    public void RandomModel_IsDeterministicAndNonDegenerate(string name)
    {
        var config = ReferenceModels.RandomConfig(name);
        var tokens = ReferenceModels.RandomTokens(24, config.VocabSize);
        using var a = ReferenceModels.CreateRandom(config, seed: 5);
        using var b = ReferenceModels.CreateRandom(config, seed: 5);
        using var c = ReferenceModels.CreateRandom(config, seed: 6);
        var la = a.Reference.Forward(tokens);
        Assert.Equal(la, b.Reference.Forward(tokens));
        Assert.NotEqual(la[^1], c.Reference.Forward(tokens)[^1]);
        foreach (var row in la)
        {
            Assert.All(row, v => Assert.True(double.IsFinite(v)));
            double mean = row.Average(), std = Math.Sqrt(row.Average(v => (v - mean) * (v - mean)));
            Assert.InRange(std, 0.1, 100);
        }
    }

    /// <summary>
    /// GQA: a model whose KV heads are each copied for their group of query heads (making it plain multi-head
    /// attention) must give the same logits. Catches a wrong head → KV head mapping (e.g. h % kvHeads).
    /// </summary>
    [Theory]
    [InlineData("gqa2-halfsplit-tied")]
    [InlineData("gqa4-interleaved-tied")]
    [InlineData("qwen2-bias-gqa2")]
    [InlineData("qwen3-qknorm-gqa4")]
    [InlineData("odd-48-80-gqa3")]
    public void Gqa_EqualsMultiHeadWithRepeatedKvHeads(string name)
    {
        var config = ReferenceModels.RandomConfig(name);
        using var model = ReferenceModels.CreateRandom(config, seed: 11);
        int hd = config.HeadDim, group = config.GroupSize;
        var expanded = new Dictionary<string, double[]>(model.Tensors);
        foreach (var (tensor, values) in model.Tensors)
        {
            bool kv = tensor.EndsWith(TensorNames.Suffix.K) || tensor.EndsWith(TensorNames.Suffix.V)
                || tensor.EndsWith(TensorNames.Suffix.KBias) || tensor.EndsWith(TensorNames.Suffix.VBias);
            if (!kv) continue;
            int rowLen = values.Length / (config.NumKvHeads * hd); // hidden for weights, 1 for biases
            var copy = new List<double>();
            for (int kvHead = 0; kvHead < config.NumKvHeads; kvHead++)
                for (int g = 0; g < group; g++)
                    copy.AddRange(values.AsSpan(kvHead * hd * rowLen, hd * rowLen).ToArray());
            expanded[tensor] = copy.ToArray();
        }
        var mha = new ReferenceTransformer(config with { NumKvHeads = config.NumHeads }, ReferenceWeights.FromDictionary(expanded));
        var tokens = ReferenceModels.RandomTokens(20, config.VocabSize, seed: 3);
        var expected = mha.Forward(tokens);
        var actual = model.Reference.Forward(tokens);
        for (int t = 0; t < tokens.Length; t++) ReferenceTransformerTests.AssertClose(expected[t], actual[t], 1e-12);
    }

    /// <summary>Quantized random weights (configs whose widths are multiples of 32) decode to the oracle's values too.</summary>
    [Theory]
    [InlineData("gqa2-halfsplit-tied", GgmlType.Q8_0)]
    [InlineData("gqa4-halfsplit-untied", GgmlType.Q4_0)]
    public void RandomModel_QuantizedWeightsMatchTheirDecoding(string name, GgmlType type)
    {
        using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig(name), seed: 9, linearType: type);
        var decoded = ReferenceWeights.FromModelWeights(model.Weights);
        foreach (var (tensor, values) in model.Tensors) Assert.Equal(values, decoded(tensor));
        var q = model.Tensors[TensorNames.Layer(0, TensorNames.Suffix.Q)];
        Assert.True(q.Distinct().Count() > (type == GgmlType.Q4_0 ? 100 : 1000), "quantized weights are degenerate");
        Assert.All(model.Reference.Forward([1, 2, 3])[^1], v => Assert.True(double.IsFinite(v)));
        Assert.Throws<ArgumentException>(() => ReferenceModels.CreateRandom(ReferenceModels.RandomConfig("odd-48-80-gqa3"), linearType: type));
    }

    /// <summary>
    /// The two RoPE conventions are the same model up to a permutation of q/k rows within each head: half-split
    /// dimension h * (d/2) + i (h = 0, 1) is interleaved dimension 2i + h (the permutation llama.cpp's converter
    /// applies to Hugging Face q/k weights). Permuting q/k weights, biases and q/k-norm weights that way and
    /// switching the style must give the same logits — checks each style against the other.
    /// </summary>
    [Theory]
    [InlineData("gqa2-halfsplit-tied")]
    [InlineData("qwen2-bias-gqa2")]
    [InlineData("qwen3-qknorm-gqa4")]
    [InlineData("llama3-scaled-gqa2")]
    public void RopeStyles_AreEquivalentUnderTheGgufPermutation(string name)
    {
        var config = ReferenceModels.RandomConfig(name);
        Assert.Equal(RopeStyle.HalfSplit, config.RopeStyle);
        using var model = ReferenceModels.CreateRandom(config, seed: 13);
        int hd = config.HeadDim, half = hd / 2;
        var permuted = new Dictionary<string, double[]>(model.Tensors);
        foreach (var (tensor, values) in model.Tensors)
        {
            bool qk = tensor.EndsWith(TensorNames.Suffix.Q) || tensor.EndsWith(TensorNames.Suffix.K)
                || tensor.EndsWith(TensorNames.Suffix.QBias) || tensor.EndsWith(TensorNames.Suffix.KBias)
                || tensor.EndsWith(TensorNames.Suffix.QNorm) || tensor.EndsWith(TensorNames.Suffix.KNorm);
            if (!qk) continue;
            bool isWeight = tensor.EndsWith(TensorNames.Suffix.Q) || tensor.EndsWith(TensorNames.Suffix.K);
            int rowLen = isWeight ? config.HiddenSize : 1;
            int rows = values.Length / rowLen;
            var result = new double[values.Length];
            for (int row = 0; row < rows; row++)
            {
                int head = row / hd, j = row % hd, h = j / half, i = j % half;
                int target = head * hd + 2 * i + h;
                Array.Copy(values, row * rowLen, result, target * rowLen, rowLen);
            }
            permuted[tensor] = result;
        }
        var interleaved = new ReferenceTransformer(config with { RopeStyle = RopeStyle.Interleaved }, ReferenceWeights.FromDictionary(permuted));
        var tokens = ReferenceModels.RandomTokens(20, config.VocabSize, seed: 4);
        var expected = model.Reference.Forward(tokens);
        var actual = interleaved.Forward(tokens);
        for (int t = 0; t < tokens.Length; t++) ReferenceTransformerTests.AssertClose(expected[t], actual[t], 1e-11);
        // And the styles do differ without the permutation.
        var unpermuted = new ReferenceTransformer(config with { RopeStyle = RopeStyle.Interleaved }, ReferenceWeights.FromDictionary(model.Tensors));
        Assert.True(Math.Abs(unpermuted.Forward(tokens)[^1][0] - expected[^1][0]) > 1e-6);
    }

    /// <summary>Causal attention: the logits of a prefix do not depend on the tokens after it.</summary>
    [Fact]
    public void Attention_IsCausal()
    {
        using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig("everything-qwen"), seed: 2);
        var a = ReferenceModels.RandomTokens(16, model.Config.VocabSize, seed: 1);
        var b = a.ToArray();
        for (int i = 10; i < b.Length; i++) b[i] = (b[i] + 1) % model.Config.VocabSize;
        var la = model.Reference.Forward(a);
        var lb = model.Reference.Forward(b);
        for (int t = 0; t < 10; t++) Assert.Equal(la[t], lb[t]);
        Assert.NotEqual(la[10], lb[10]);
    }

    /// <summary>The Llama-3 scaling is really used: the same weights without it give different logits beyond position 0.</summary>
    [Fact]
    public void RopeScaling_ChangesLogits()
    {
        var config = ReferenceModels.RandomConfig("llama3-scaled-gqa2");
        using var model = ReferenceModels.CreateRandom(config, seed: 4);
        var unscaled = new ReferenceTransformer(config with { RopeScaling = null }, ReferenceWeights.FromDictionary(model.Tensors));
        var tokens = ReferenceModels.RandomTokens(12, config.VocabSize);
        var a = model.Reference.Forward(tokens);
        var b = unscaled.Forward(tokens);
        Assert.Equal(a[0], b[0]);
        Assert.True(Math.Abs(a[^1][0] - b[^1][0]) > 1e-6);
    }
}

/// <summary>The comparison helpers must reject what they are meant to catch.</summary>
public sealed class ReferenceCompareTests
{
    /// <summary>Errors are measured against the largest logit; large errors and missing positions fail.</summary>
    [Fact]
    public void AssertLogitsClose_AcceptsSmallErrorsAndRejectsLargeOnes()
    {
        double[][] expected = [[10, 2, -3], [1, 0.5, 0]];
        ReferenceCompare.AssertLogitsClose(expected, [[10.0005f, 2, -3], [1, 0.5f, 0.00005f]], 1e-4);
        Assert.Equal(0.1, ReferenceCompare.MaxRelativeError(expected[0], [10, 3, -3]), 12);
        Assert.ThrowsAny<Exception>(() => ReferenceCompare.AssertLogitsClose(expected, [[10, 2.1f, -3], [1, 0.5f, 0]], 1e-3));
        Assert.ThrowsAny<Exception>(() => ReferenceCompare.AssertLogitsClose(expected, [[10, 2, -3]], 1));
    }
}
