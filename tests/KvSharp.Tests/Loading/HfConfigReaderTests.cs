using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Tests.Loading;

public class HfConfigReaderTests
{
    private static ModelConfig ReadJson(string json)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), json);
        return HfConfigReader.Read(dir.Path);
    }

    [Fact]
    public void TinyStoriesConfig()
    {
        var c = HfConfigReader.Read(RepoPaths.SharedFile("models", "tinystories-656k", "config.json"));
        Assert.Equal("llama", c.Architecture);
        Assert.Equal(128, c.HiddenSize);
        Assert.Equal(384, c.IntermediateSize);
        Assert.Equal(2, c.NumLayers);
        Assert.Equal(8, c.NumHeads);
        Assert.Equal(4, c.NumKvHeads);
        Assert.Equal(16, c.HeadDim);
        Assert.Equal(2048, c.VocabSize);
        Assert.Equal(1e-6f, c.RmsNormEps);
        Assert.Equal(10000.0, c.RopeTheta);
        Assert.Equal(RopeStyle.HalfSplit, c.RopeStyle);
        Assert.Null(c.RopeScaling);
        Assert.True(c.TieEmbeddings);
        Assert.Equal(512, c.MaxContext);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
        Assert.False(c.AttentionBias);
        Assert.False(c.QkNorm);
    }

    [Fact]
    public void NeedleConfigUsesRopeParameters()
    {
        var c = HfConfigReader.Read(RepoPaths.SharedFile("models", "kvsharp-needle-16m"));
        Assert.Equal(100000.0, c.RopeTheta);
        Assert.Equal(8, c.NumLayers);
        Assert.Equal(6, c.NumHeads);
        Assert.Equal(2, c.NumKvHeads);
        Assert.Equal(64, c.HeadDim);
        Assert.Equal(8192, c.VocabSize);
        Assert.Equal(8192, c.MaxContext);
        Assert.Equal(1e-5f, c.RmsNormEps);
        Assert.True(c.TieEmbeddings);
        Assert.Equal(0, c.BosTokenId);
        Assert.Equal([1], c.EosTokenIds);
    }

    // Shape of Llama-3.1-8B's config (transformers 4 layout).
    private const string Llama31 = """
        {"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":4096,"intermediate_size":14336,
         "num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"vocab_size":128256,
         "max_position_embeddings":131072,"rms_norm_eps":1e-05,"rope_theta":500000.0,
         "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},
         "bos_token_id":128000,"eos_token_id":[128001,128008,128009],"tie_word_embeddings":false}
        """;

    [Fact]
    public void Llama3RopeScalingFromRopeScaling()
    {
        var c = ReadJson(Llama31);
        Assert.Equal(new Llama3RopeScaling(8, 1, 4, 8192), c.RopeScaling);
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Equal(128, c.HeadDim);
        Assert.Equal([128001, 128008, 128009], c.EosTokenIds);
        Assert.Equal(128000, c.BosTokenId);
        Assert.False(c.TieEmbeddings);
        Assert.Equal(131072, c.MaxContext);
    }

    [Fact]
    public void Llama3RopeScalingFromRopeParameters()
    {
        var c = ReadJson("""
            {"model_type":"llama","hidden_size":2048,"intermediate_size":8192,"num_attention_heads":32,"num_hidden_layers":16,
             "num_key_value_heads":8,"vocab_size":128256,"head_dim":64,
             "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}
            """);
        Assert.Equal(new Llama3RopeScaling(32, 1, 4, 8192), c.RopeScaling);
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Equal(64, c.HeadDim);
    }

    [Fact]
    public void Qwen2HasQkvBiasByDefault()
    {
        var c = ReadJson("""
            {"model_type":"qwen2","hidden_size":896,"intermediate_size":4864,"num_attention_heads":14,"num_hidden_layers":24,
             "num_key_value_heads":2,"vocab_size":151936,"rope_theta":1000000.0,"rms_norm_eps":1e-06,"tie_word_embeddings":true,
             "max_position_embeddings":32768,"bos_token_id":151643,"eos_token_id":151645}
            """);
        Assert.Equal("qwen2", c.Architecture);
        Assert.True(c.AttentionBias);
        Assert.False(c.QkNorm);
        Assert.Equal(64, c.HeadDim);
        Assert.Equal(1000000.0, c.RopeTheta);
        Assert.Equal(RopeStyle.HalfSplit, c.RopeStyle);
    }

    [Fact]
    public void Qwen3HasQkNormAndExplicitHeadDim()
    {
        var c = ReadJson("""
            {"model_type":"qwen3","hidden_size":1024,"intermediate_size":3072,"num_attention_heads":16,"num_hidden_layers":28,
             "num_key_value_heads":8,"head_dim":128,"vocab_size":151936,"attention_bias":false,"rope_theta":1000000,
             "tie_word_embeddings":true,"eos_token_id":151645}
            """);
        Assert.Equal("qwen3", c.Architecture);
        Assert.True(c.QkNorm);
        Assert.False(c.AttentionBias);
        Assert.Equal(128, c.HeadDim); // not hidden/heads = 64
    }

    [Fact]
    public void SmolLmIsLlama()
    {
        var c = ReadJson("""{"model_type":"smollm","hidden_size":64,"intermediate_size":128,"num_attention_heads":4,"num_hidden_layers":1,"vocab_size":10}""");
        Assert.Equal("llama", c.Architecture);
        Assert.Equal(4, c.NumKvHeads);
    }

    [Fact]
    public void UnknownModelTypeListsSupported()
    {
        var e = Assert.Throws<ModelFormatException>(() => ReadJson("""{"model_type":"gpt2","hidden_size":64}"""));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("'gpt2'", e.Message);
        Assert.Contains("qwen3", e.Message);
    }

    [Fact]
    public void MissingConfigAndBadValuesAreReported()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ModelFormatException>(() => HfConfigReader.Read(dir.Path));
        Assert.Contains("config.json", e.Message);
        var e2 = Assert.Throws<ModelFormatException>(() => ReadJson("""{"model_type":"llama","hidden_size":"big"}"""));
        Assert.Contains("hidden_size", e2.Message);
        var e3 = Assert.Throws<ModelFormatException>(() => ReadJson("""{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"vocab_size":9}"""));
        Assert.Contains("intermediate_size", e3.Message);
    }
}
