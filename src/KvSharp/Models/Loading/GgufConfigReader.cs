using KvSharp.Formats;
using KvSharp.Formats.Gguf;

namespace KvSharp.Models.Loading;

/// <summary>
/// Builds a <see cref="ModelConfig"/> from a GGUF file's metadata (<c>{arch}.*</c> and
/// <c>tokenizer.ggml.*</c> keys) and from which tensors it stores.
/// </summary>
/// <remarks>
/// RoPE pairing: llama.cpp's converter permutes the Q/K rows of llama/mistral checkpoints so that
/// GGUF "llama" models use interleaved pairs, while qwen2/qwen3 keep Hugging Face's half-split
/// ("neox") layout. Llama-3.1-style RoPE scaling is stored by the converter only as a
/// <c>rope_freqs.weight</c> tensor of per-frequency divisors; we read that tensor and recover the
/// <see cref="Llama3RopeScaling"/> parameters that reproduce it (verified to 1e-3), so the rest of
/// the engine has a single description of RoPE whatever the source format.
/// </remarks>
public static class GgufConfigReader
{
    /// <summary>general.architecture values this engine runs.</summary>
    public static IReadOnlyList<string> SupportedArchitectures { get; } = ["llama", "mistral", "qwen2", "qwen3"];

    /// <summary>The tensor llama.cpp stores Llama-3 RoPE frequency factors in.</summary>
    public const string RopeFreqsTensor = "rope_freqs.weight";

    /// <summary>Reads the model configuration of <paramref name="gguf"/>.</summary>
    public static unsafe ModelConfig Read(GgufFile gguf)
    {
        string path = gguf.Path;
        string arch = gguf.Require<string>("general.architecture");
        if (!SupportedArchitectures.Contains(arch))
            throw new ModelFormatException(path, $"unsupported general.architecture '{arch}' (supported: {string.Join(", ", SupportedArchitectures)})");

        int Req(string key) => ToInt(gguf, $"{arch}.{key}");
        int? Opt(string key) => gguf.Metadata.ContainsKey($"{arch}.{key}") ? Req(key) : null;

        int hidden = Req("embedding_length");
        int heads = Req("attention.head_count");
        int kvHeads = Opt("attention.head_count_kv") ?? heads;
        int headDim = Opt("attention.key_length") ?? (hidden % heads == 0 ? hidden / heads
            : throw new ModelFormatException(path, $"{arch}.embedding_length {hidden} is not divisible by {heads} heads and no {arch}.attention.key_length is given"));

        var embd = gguf.FindTensor(TensorNames.TokenEmbedding)
            ?? throw new ModelFormatException(path, $"missing tensor '{TensorNames.TokenEmbedding}'");
        // The logits have one entry per embedding row; vocabularies may be padded to that size but never exceed it.
        int vocab = Opt("vocab_size") ?? (int)Math.Min(embd.Shape[0], int.MaxValue);
        if (gguf.Metadata.TryGetValue("tokenizer.ggml.tokens", out var toks) && toks is string[] t && t.Length > embd.Shape[0])
            throw new ModelFormatException(path, $"tokenizer.ggml.tokens has {t.Length} tokens but '{TensorNames.TokenEmbedding}' only {embd.Shape[0]} rows");

        double theta = gguf.Get<double>($"{arch}.rope.freq_base", 10000.0);
        var eos = new List<int>();
        foreach (var key in new[] { "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id" })
        {
            // llama.cpp stops on any end-of-generation token; eot/eom are the chat models' turn ends.
            if (gguf.Metadata.ContainsKey(key) && ToInt(gguf, key) is int id && !eos.Contains(id)) eos.Add(id);
        }

        var config = new ModelConfig
        {
            Architecture = arch,
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = Req("feed_forward_length"),
            NumLayers = Req("block_count"),
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            RmsNormEps = gguf.Get<float>($"{arch}.attention.layer_norm_rms_epsilon", 1e-5f),
            RopeTheta = theta,
            RopeStyle = arch is "qwen2" or "qwen3" ? RopeStyle.HalfSplit : RopeStyle.Interleaved,
            RopeScaling = ReadRopeScaling(gguf, arch, theta, headDim),
            MaxContext = Opt("context_length") ?? 2048,
            AttentionBias = gguf.FindTensor(TensorNames.Layer(0, TensorNames.Suffix.QBias)) != null,
            QkNorm = gguf.FindTensor(TensorNames.Layer(0, TensorNames.Suffix.QNorm)) != null,
            TieEmbeddings = gguf.FindTensor(TensorNames.Output) == null,
            BosTokenId = gguf.Metadata.ContainsKey("tokenizer.ggml.bos_token_id") ? ToInt(gguf, "tokenizer.ggml.bos_token_id") : null,
            EosTokenIds = eos,
        };
        config.Validate(path);
        return config;
    }

    /// <summary>A non-negative integer metadata value that fits an int; anything else is a format error.</summary>
    private static int ToInt(GgufFile gguf, string key)
    {
        ulong v = gguf.Require<ulong>(key);
        return v <= int.MaxValue ? (int)v : throw new ModelFormatException(gguf.Path, $"metadata key '{key}' = {v} is out of range");
    }

    private static unsafe Llama3RopeScaling? ReadRopeScaling(GgufFile gguf, string arch, double theta, int headDim)
    {
        string path = gguf.Path;
        string type = gguf.Get($"{arch}.rope.scaling.type", "none");
        double factor = gguf.Get($"{arch}.rope.scaling.factor", 1.0);
        if (type is not ("none" or "llama3") && factor != 1.0)
            throw new ModelFormatException(path, $"unsupported RoPE scaling {arch}.rope.scaling.type = '{type}' with factor {factor} (supported: Llama-3 rope_freqs, or none)");

        var freqs = gguf.FindTensor(RopeFreqsTensor);
        if (freqs == null) return null;
        if (freqs.Type != GgmlType.F32 || freqs.ElementCount != headDim / 2)
            throw new ModelFormatException(path, $"tensor '{RopeFreqsTensor}' is {freqs.Type} [{string.Join(", ", freqs.Shape)}], expected F32 [{headDim / 2}]");
        var divisors = new double[headDim / 2];
        for (int i = 0; i < divisors.Length; i++) divisors[i] = ((float*)freqs.Data)[i];
        int original = gguf.Metadata.ContainsKey($"{arch}.rope.scaling.original_context_length") ? ToInt(gguf, $"{arch}.rope.scaling.original_context_length") : 8192;
        return Llama3Scaling.FromFactors(divisors, theta, headDim, original)
            ?? throw new ModelFormatException(path, $"tensor '{RopeFreqsTensor}' does not follow Llama-3 RoPE scaling; this kind of RoPE scaling is not supported");
    }
}
