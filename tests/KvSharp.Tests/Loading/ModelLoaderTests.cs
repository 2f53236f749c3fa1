using System.Text.Json;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;
using KvSharp.Tests.Formats;

namespace KvSharp.Tests.Loading;

public unsafe class ModelLoaderTests
{
    [Fact]
    public void LoadsStories260kGguf()
    {
        using var w = ModelLoader.Load(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        Assert.Equal(5, w.Config.NumLayers);
        Assert.Equal(RopeStyle.Interleaved, w.Config.RopeStyle);
        Assert.Null(w.Find(TensorNames.Output));
        Assert.Equal(new long[] { 32, 64 }, w.Require("blk.4.attn_k.weight").Shape);
        Assert.Equal(new long[] { 64, 172 }, w.Require("blk.0.ffn_down.weight").Shape);
    }

    [Fact]
    public void LoadsTinyStoriesTiedViaLmHead()
    {
        string dir = RepoPaths.SharedFile("models", "tinystories-656k");
        using var w = ModelLoader.Load(dir);
        Assert.True(w.Config.TieEmbeddings);
        Assert.Equal(RopeStyle.HalfSplit, w.Config.RopeStyle);
        Assert.Equal(1e-6f, w.Config.RmsNormEps);
        Assert.Null(w.Find(TensorNames.Output));
        var emb = w.Require(TensorNames.TokenEmbedding);
        Assert.Equal("lm_head.weight", emb.Name);
        Assert.Equal(new long[] { 2048, 128 }, emb.Shape);
        Assert.Equal(GgmlType.F32, emb.Type);
        Assert.Equal(new long[] { 384, 128 }, w.Require("blk.1.ffn_gate.weight").Shape);

        // The same through the safetensors file path (config.json beside it).
        using var w2 = ModelLoader.Load(Path.Combine(dir, "model.safetensors"));
        Assert.Equal(w.ParameterCount, w2.ParameterCount);
    }

    [Fact]
    public void LoadsNeedleShardedBf16()
    {
        using var w = ModelLoader.Load(RepoPaths.SharedFile("models", "kvsharp-needle-16m"));
        Assert.Equal(100000.0, w.Config.RopeTheta);
        Assert.Equal(8, w.Config.NumLayers);
        Assert.Equal(15735168, w.ParameterCount); // metadata.total_parameters of the index
        Assert.Equal(GgmlType.BF16, w.Require("blk.7.attn_q.weight").Type);
        Assert.Equal(new long[] { 128, 384 }, w.Require("blk.7.attn_v.weight").Shape);
        Assert.Null(w.Find(TensorNames.Output));
    }

    private const string TinyConfig = """
        {"model_type":"qwen2","hidden_size":8,"intermediate_size":16,"num_attention_heads":2,"num_hidden_layers":1,
         "num_key_value_heads":1,"vocab_size":4,"tie_word_embeddings":true}
        """;

    /// <summary>A one-layer qwen2 checkpoint with all tensors (zeros) except those removed or reshaped.</summary>
    private static void WriteTiny(TempDir dir, string? drop = null, (string Name, long[] Shape)? reshape = null, string? extra = null)
    {
        File.WriteAllText(dir.File("config.json"), TinyConfig);
        var shapes = new Dictionary<string, long[]>
        {
            ["model.embed_tokens.weight"] = [4, 8],
            ["model.norm.weight"] = [8],
            ["model.layers.0.input_layernorm.weight"] = [8],
            ["model.layers.0.post_attention_layernorm.weight"] = [8],
            ["model.layers.0.self_attn.q_proj.weight"] = [8, 8],
            ["model.layers.0.self_attn.q_proj.bias"] = [8],
            ["model.layers.0.self_attn.k_proj.weight"] = [4, 8],
            ["model.layers.0.self_attn.k_proj.bias"] = [4],
            ["model.layers.0.self_attn.v_proj.weight"] = [4, 8],
            ["model.layers.0.self_attn.v_proj.bias"] = [4],
            ["model.layers.0.self_attn.o_proj.weight"] = [8, 8],
            ["model.layers.0.mlp.gate_proj.weight"] = [16, 8],
            ["model.layers.0.mlp.up_proj.weight"] = [16, 8],
            ["model.layers.0.mlp.down_proj.weight"] = [8, 16],
        };
        if (drop != null) shapes.Remove(drop);
        if (reshape is { } r) shapes[r.Name] = r.Shape;
        if (extra != null) shapes[extra] = [2];
        SafeTensorsFixture.Write(dir.File("model.safetensors"),
            shapes.Select(kv => new SafeTensorsFixture.Entry(kv.Key, "F32", kv.Value, new byte[4 * kv.Value.Aggregate(1L, (a, b) => a * b)])));
    }

    [Fact]
    public void LoadsQwen2WithBiases()
    {
        using var dir = new TempDir();
        WriteTiny(dir);
        using var w = ModelLoader.Load(dir.Path);
        Assert.True(w.Config.AttentionBias);
        Assert.Equal(new long[] { 4 }, w.Require("blk.0.attn_k.bias").Shape);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        using var dir = new TempDir();
        WriteTiny(dir, drop: "model.layers.0.self_attn.v_proj.bias");
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path));
        Assert.Contains("blk.0.attn_v.bias", e.Message);
        Assert.Contains("model.safetensors", e.Message);
    }

    [Fact]
    public void WrongShapeIsNamedWithExpectedAndActual()
    {
        using var dir = new TempDir();
        WriteTiny(dir, reshape: ("model.layers.0.mlp.up_proj.weight", [8, 16]));
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path));
        Assert.Contains("blk.0.ffn_up.weight", e.Message);
        Assert.Contains("model.layers.0.mlp.up_proj.weight", e.Message);
        Assert.Contains("[8, 16]", e.Message);
        Assert.Contains("expected [16, 8]", e.Message);
    }

    [Fact]
    public void UnknownTensorIsRejected()
    {
        using var dir = new TempDir();
        WriteTiny(dir, extra: "model.layers.0.mlp.gate_proj.bias");
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path));
        Assert.Contains("model.layers.0.mlp.gate_proj.bias", e.Message);
    }

    [Fact]
    public void MissingConfigAndNonModelsAreReported()
    {
        using var dir = new TempDir();
        SafeTensorsFixture.Write(dir.File("model.safetensors"), [new("a", "F32", [1], new byte[4])]);
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path));
        Assert.Contains("config.json", e.Message);
        var e2 = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.File("model.safetensors")));
        Assert.Contains("config.json", e2.Message);
        File.WriteAllText(dir.File("notes.txt"), "hello");
        Assert.Contains("not a model", Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.File("notes.txt"))).Message);
        Assert.Contains("no such file", Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.File("nope.gguf"))).Message);
        File.WriteAllText(dir.File("config.json"), JsonSerializer.Serialize(new { model_type = "phi3" }));
        Assert.Contains("'phi3'", Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path)).Message);
    }
}
