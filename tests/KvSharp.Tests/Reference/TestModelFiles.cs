using System.Text.Json;
using KvSharp.Formats;
using KvSharp.Formats.Gguf;
using KvSharp.Models;

namespace KvSharp.Tests.Reference;

/// <summary>
/// Minimal test-only loaders (GGUF llama metadata, Hugging Face sharded safetensors) that feed the oracle
/// real models independently of the engine's official loaders. They handle just what the shared tiny
/// models need and fail loudly on anything else.
/// </summary>
public static unsafe class TestModelFiles
{
    /// <summary>A GGUF "llama" model (names are already canonical; RoPE is interleaved in GGUF's llama convention).</summary>
    public static ModelWeights LoadGgufLlama(string path)
    {
        var gguf = GgufFile.Open(path);
        try
        {
            string arch = gguf.Require<string>("general.architecture");
            if (arch != "llama") throw new NotSupportedException($"{path}: test loader handles 'llama' only, not '{arch}'");
            int hidden = gguf.Require<int>("llama.embedding_length");
            int heads = gguf.Require<int>("llama.attention.head_count");
            var embd = gguf.FindTensor(TensorNames.TokenEmbedding) ?? throw new InvalidDataException($"{path}: no token_embd.weight");
            var config = new ModelConfig
            {
                Architecture = arch,
                VocabSize = (int)embd.Shape[0],
                HiddenSize = hidden,
                IntermediateSize = gguf.Require<int>("llama.feed_forward_length"),
                NumLayers = gguf.Require<int>("llama.block_count"),
                NumHeads = heads,
                NumKvHeads = gguf.Get("llama.attention.head_count_kv", heads),
                HeadDim = gguf.Get("llama.rope.dimension_count", hidden / heads),
                RmsNormEps = gguf.Require<float>("llama.attention.layer_norm_rms_epsilon"),
                RopeTheta = gguf.Get("llama.rope.freq_base", 10000.0),
                RopeStyle = RopeStyle.Interleaved,
                MaxContext = gguf.Get("llama.context_length", 2048),
                TieEmbeddings = gguf.FindTensor(TensorNames.Output) is null,
            };
            config.Validate(path);
            var tensors = gguf.Tensors.ToDictionary(t => t.Name, t => t, StringComparer.Ordinal);
            return new ModelWeights(config, path, tensors, gguf);
        }
        catch
        {
            gguf.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A Hugging Face Llama/Qwen2/Qwen3 model folder (config.json + model.safetensors or sharded
    /// model-*.safetensors with model.safetensors.index.json), tensors mapped to canonical names.
    /// </summary>
    public static ModelWeights LoadHfSafetensors(string dir)
    {
        using var cfgDoc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "config.json")));
        var cfg = cfgDoc.RootElement;
        int hidden = cfg.GetProperty("hidden_size").GetInt32();
        int heads = cfg.GetProperty("num_attention_heads").GetInt32();
        string modelType = cfg.GetProperty("model_type").GetString()!;
        double theta = cfg.TryGetProperty("rope_theta", out var rt) ? rt.GetDouble()
            : cfg.TryGetProperty("rope_parameters", out var rp) && rp.TryGetProperty("rope_theta", out var rpt) ? rpt.GetDouble()
            : 10000.0;
        Llama3RopeScaling? scaling = null;
        if (cfg.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object)
        {
            if (rs.GetProperty("rope_type").GetString() != "llama3") throw new NotSupportedException($"{dir}: rope_scaling other than llama3");
            scaling = new Llama3RopeScaling(rs.GetProperty("factor").GetDouble(), rs.GetProperty("low_freq_factor").GetDouble(),
                rs.GetProperty("high_freq_factor").GetDouble(), rs.GetProperty("original_max_position_embeddings").GetInt32());
        }
        bool Flag(string name, bool fallback) => cfg.TryGetProperty(name, out var e) && e.ValueKind is JsonValueKind.True or JsonValueKind.False ? e.GetBoolean() : fallback;

        var files = new List<MappedFile>();
        var tensors = new Dictionary<string, TensorView>(StringComparer.Ordinal);
        try
        {
            var shards = Directory.GetFiles(dir, "*.safetensors").OrderBy(p => p, StringComparer.Ordinal).ToArray();
            if (shards.Length == 0) throw new FileNotFoundException($"{dir}: no .safetensors files");
            foreach (var shard in shards)
            {
                var file = new MappedFile(shard);
                files.Add(file);
                foreach (var view in ReadSafetensors(file))
                {
                    var canonical = CanonicalName(view.Name) ?? throw new InvalidDataException($"{shard}: unexpected tensor '{view.Name}'");
                    tensors.Add(canonical, view);
                }
            }
            bool tie = Flag("tie_word_embeddings", false);
            // Some tied checkpoints store only lm_head.weight: it is the embedding then.
            if (!tensors.ContainsKey(TensorNames.TokenEmbedding) && tie && tensors.Remove(TensorNames.Output, out var lmHead))
                tensors[TensorNames.TokenEmbedding] = lmHead;
            if (tie) tensors.Remove(TensorNames.Output);

            var config = new ModelConfig
            {
                Architecture = modelType,
                VocabSize = cfg.GetProperty("vocab_size").GetInt32(),
                HiddenSize = hidden,
                IntermediateSize = cfg.GetProperty("intermediate_size").GetInt32(),
                NumLayers = cfg.GetProperty("num_hidden_layers").GetInt32(),
                NumHeads = heads,
                NumKvHeads = cfg.TryGetProperty("num_key_value_heads", out var kv) ? kv.GetInt32() : heads,
                HeadDim = cfg.TryGetProperty("head_dim", out var hd) && hd.ValueKind == JsonValueKind.Number ? hd.GetInt32() : hidden / heads,
                RmsNormEps = (float)cfg.GetProperty("rms_norm_eps").GetDouble(),
                RopeTheta = theta,
                RopeStyle = RopeStyle.HalfSplit,
                RopeScaling = scaling,
                MaxContext = cfg.GetProperty("max_position_embeddings").GetInt32(),
                AttentionBias = Flag("attention_bias", modelType == "qwen2"),
                QkNorm = modelType == "qwen3",
                TieEmbeddings = tie,
            };
            config.Validate(dir);
            return new ModelWeights(config, dir, tensors, files.ToArray());
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>The tensors of one safetensors file: u64 header length, JSON header, then the data section.</summary>
    public static List<TensorView> ReadSafetensors(MappedFile file)
    {
        long headerLen = BitConverter.ToInt64(file.Span(0, 8));
        if (headerLen <= 0 || 8 + headerLen > file.Length) throw new InvalidDataException($"{file.Path}: bad header length {headerLen}");
        using var header = JsonDocument.Parse(file.Span(8, (int)headerLen).ToArray());
        long dataStart = 8 + headerLen;
        var views = new List<TensorView>();
        foreach (var entry in header.RootElement.EnumerateObject())
        {
            if (entry.Name == "__metadata__") continue;
            var type = entry.Value.GetProperty("dtype").GetString() switch
            {
                "F32" => GgmlType.F32,
                "F16" => GgmlType.F16,
                "BF16" => GgmlType.BF16,
                var other => throw new NotSupportedException($"{file.Path}: tensor '{entry.Name}' has dtype {other}"),
            };
            var shape = entry.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            var offsets = entry.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            long bytes = offsets[1] - offsets[0];
            long elements = shape.Aggregate(1L, (a, b) => a * b);
            if (bytes != elements * GgmlTypeInfo.BlockBytes(type) || dataStart + offsets[1] > file.Length)
                throw new InvalidDataException($"{file.Path}: tensor '{entry.Name}' offsets {offsets[0]}..{offsets[1]} do not fit its shape or the file");
            views.Add(new TensorView(entry.Name, type, shape, file.Pointer + dataStart + offsets[0], bytes));
        }
        return views;
    }

    /// <summary>Hugging Face Llama/Qwen tensor name → canonical (GGUF) name, or null when unknown.</summary>
    public static string? CanonicalName(string hf)
    {
        switch (hf)
        {
            case "model.embed_tokens.weight": return TensorNames.TokenEmbedding;
            case "model.norm.weight": return TensorNames.OutputNorm;
            case "lm_head.weight": return TensorNames.Output;
        }
        const string prefix = "model.layers.";
        if (!hf.StartsWith(prefix, StringComparison.Ordinal)) return null;
        int dot = hf.IndexOf('.', prefix.Length);
        if (dot < 0 || !int.TryParse(hf.AsSpan(prefix.Length, dot - prefix.Length), out int layer)) return null;
        string? suffix = hf[(dot + 1)..] switch
        {
            "input_layernorm.weight" => TensorNames.Suffix.AttnNorm,
            "self_attn.q_proj.weight" => TensorNames.Suffix.Q,
            "self_attn.k_proj.weight" => TensorNames.Suffix.K,
            "self_attn.v_proj.weight" => TensorNames.Suffix.V,
            "self_attn.q_proj.bias" => TensorNames.Suffix.QBias,
            "self_attn.k_proj.bias" => TensorNames.Suffix.KBias,
            "self_attn.v_proj.bias" => TensorNames.Suffix.VBias,
            "self_attn.q_norm.weight" => TensorNames.Suffix.QNorm,
            "self_attn.k_norm.weight" => TensorNames.Suffix.KNorm,
            "self_attn.o_proj.weight" => TensorNames.Suffix.AttnOutput,
            "post_attention_layernorm.weight" => TensorNames.Suffix.FfnNorm,
            "mlp.gate_proj.weight" => TensorNames.Suffix.FfnGate,
            "mlp.up_proj.weight" => TensorNames.Suffix.FfnUp,
            "mlp.down_proj.weight" => TensorNames.Suffix.FfnDown,
            _ => null,
        };
        return suffix is null ? null : TensorNames.Layer(layer, suffix);
    }
}
