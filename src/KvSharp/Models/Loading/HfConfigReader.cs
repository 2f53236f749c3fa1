using System.Globalization;
using System.Text.Json;

namespace KvSharp.Models.Loading;

/// <summary>
/// Reads a Hugging Face <c>config.json</c> into a <see cref="ModelConfig"/>. Handles both the
/// transformers 4 layout (top-level <c>rope_theta</c>, <c>rope_scaling</c>) and transformers 5
/// (<c>rope_parameters</c>). Hugging Face checkpoints use the half-split RoPE pairing.
/// </summary>
public static class HfConfigReader
{
    /// <summary>The config file name inside a model directory.</summary>
    public const string FileName = "config.json";

    /// <summary>model_type values this engine runs; smollm models are llama-architecture.</summary>
    public static IReadOnlyList<string> SupportedModelTypes { get; } = ["llama", "mistral", "qwen2", "qwen3", "smollm"];

    /// <summary>Reads <paramref name="path"/>: a config.json file or a directory containing one.</summary>
    public static ModelConfig Read(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, FileName);
        if (!File.Exists(path)) throw new ModelFormatException(path, "file not found (a Hugging Face model needs a config.json)");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true }); }
        catch (JsonException e) { throw new ModelFormatException(path, $"invalid JSON ({e.Message})"); }
        using (doc) return Parse(doc.RootElement, path);
    }

    /// <summary>Parses config.json text; <paramref name="source"/> names it in errors.</summary>
    public static ModelConfig Parse(string json, string source)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true }); }
        catch (JsonException e) { throw new ModelFormatException(source, $"invalid JSON ({e.Message})"); }
        using (doc) return Parse(doc.RootElement, source);
    }

    private static ModelConfig Parse(JsonElement root, string source)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new ModelFormatException(source, "config is not a JSON object");
        var c = new Json(root, source);

        string modelType = c.String("model_type") ?? throw new ModelFormatException(source,
            $"missing 'model_type' (supported: {string.Join(", ", SupportedModelTypes)})");
        string arch = modelType switch
        {
            "llama" or "smollm" => "llama",
            "mistral" => "mistral",
            "qwen2" => "qwen2",
            "qwen3" => "qwen3",
            _ => throw new ModelFormatException(source,
                $"unsupported model_type '{modelType}' (supported: {string.Join(", ", SupportedModelTypes)})"),
        };

        int hidden = c.RequireInt("hidden_size");
        int heads = c.RequireInt("num_attention_heads");
        int kvHeads = c.Int("num_key_value_heads") ?? heads;
        // Some configs carry "head_dim": null; only a number overrides hidden/heads.
        int headDim = c.Int("head_dim") ?? (heads > 0 && hidden % heads == 0 ? hidden / heads
            : throw new ModelFormatException(source, $"hidden_size {hidden} is not divisible by num_attention_heads {heads} and no head_dim is given"));

        // transformers 5 moved rope_theta and rope_scaling into rope_parameters.
        var ropeParams = c.Object("rope_parameters");
        var ropeScaling = c.Object("rope_scaling");
        double theta = c.Double("rope_theta") ?? ropeParams?.Double("rope_theta") ?? ropeScaling?.Double("rope_theta") ?? 10000.0;
        var scaling = ReadRopeScaling(ropeScaling, source) ?? ReadRopeScaling(ropeParams, source);

        // Qwen2 always has q/k/v biases (its config has no attention_bias key); an explicit key wins.
        bool bias = c.Bool("attention_bias") ?? arch == "qwen2";

        var config = new ModelConfig
        {
            Architecture = arch,
            VocabSize = c.RequireInt("vocab_size"),
            HiddenSize = hidden,
            IntermediateSize = c.RequireInt("intermediate_size"),
            NumLayers = c.RequireInt("num_hidden_layers"),
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            RmsNormEps = (float)(c.Double("rms_norm_eps") ?? 1e-6),
            RopeTheta = theta,
            RopeStyle = RopeStyle.HalfSplit,
            RopeScaling = scaling,
            MaxContext = c.Int("max_position_embeddings") ?? 2048,
            AttentionBias = bias,
            QkNorm = arch == "qwen3",
            TieEmbeddings = c.Bool("tie_word_embeddings") ?? false,
            BosTokenId = c.Int("bos_token_id"),
            EosTokenIds = c.IntList("eos_token_id"),
        };
        config.Validate(source);
        return config;
    }

    private static Llama3RopeScaling? ReadRopeScaling(Json? s, string source)
    {
        if (s == null) return null;
        string? type = s.Value.String("rope_type") ?? s.Value.String("type");
        switch (type)
        {
            case null or "default":
                return null;
            case "llama3":
                return new Llama3RopeScaling(
                    s.Value.RequireDouble("factor"),
                    s.Value.Double("low_freq_factor") ?? 1.0,
                    s.Value.Double("high_freq_factor") ?? 4.0,
                    s.Value.RequireInt("original_max_position_embeddings"));
            case "linear" or "dynamic" or "yarn" or "longrope" when (s.Value.Double("factor") ?? 1.0) == 1.0:
                return null; // a factor of 1 changes nothing
            default:
                throw new ModelFormatException(source, $"unsupported RoPE scaling type '{type}' (supported: llama3, or none)");
        }
    }

    /// <summary>Typed, error-reporting access to a JSON object's members.</summary>
    private readonly struct Json(JsonElement obj, string source)
    {
        private JsonElement? Get(string key) =>
            obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        private ModelFormatException Bad(string key, JsonElement v, string expected) =>
            new(source, $"'{key}' is {v.GetRawText()}, expected {expected}");

        public string? String(string key) => Get(key) is { } v
            ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw Bad(key, v, "a string")
            : null;

        public int? Int(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i)) return i;
            // Some exporters write integral values as 8192.0.
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue) return (int)d;
            throw Bad(key, v, "an integer");
        }

        public int RequireInt(string key) => Int(key) ?? throw new ModelFormatException(source, $"missing required key '{key}'");

        public double? Double(string key) => Get(key) is { } v
            ? v.ValueKind == JsonValueKind.Number ? v.GetDouble()
              : v.ValueKind == JsonValueKind.String && double.TryParse(v.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? d
              : throw Bad(key, v, "a number")
            : null;

        public double RequireDouble(string key) => Double(key) ?? throw new ModelFormatException(source, $"missing required key '{key}'");

        public bool? Bool(string key) => Get(key) is { } v
            ? v.ValueKind switch { JsonValueKind.True => true, JsonValueKind.False => false, _ => throw Bad(key, v, "true or false") }
            : null;

        public Json? Object(string key) => Get(key) is { } v
            ? v.ValueKind == JsonValueKind.Object ? new Json(v, source) : throw Bad(key, v, "an object")
            : null;

        /// <summary>An int or a list of ints (eos_token_id may be either).</summary>
        public IReadOnlyList<int> IntList(string key)
        {
            if (Get(key) is not { } v) return Array.Empty<int>();
            if (v.ValueKind == JsonValueKind.Array)
            {
                var list = new List<int>();
                foreach (var e in v.EnumerateArray())
                    list.Add(e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int i) ? i : throw Bad(key, v, "an integer or a list of integers"));
                return list;
            }
            return [Int(key)!.Value];
        }
    }
}
