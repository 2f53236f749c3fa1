using System.Globalization;

namespace KvSharp.Models.Loading;

/// <summary>Maps Hugging Face (transformers) tensor names of Llama-family models to the canonical GGUF names.</summary>
public static class HfTensorNames
{
    /// <summary>Hugging Face name of the input embedding.</summary>
    public const string EmbedTokens = "model.embed_tokens.weight";
    /// <summary>Hugging Face name of the output projection.</summary>
    public const string LmHead = "lm_head.weight";

    private static readonly Dictionary<string, string> LayerSuffixes = new(StringComparer.Ordinal)
    {
        ["input_layernorm.weight"] = TensorNames.Suffix.AttnNorm,
        ["self_attn.q_proj.weight"] = TensorNames.Suffix.Q,
        ["self_attn.k_proj.weight"] = TensorNames.Suffix.K,
        ["self_attn.v_proj.weight"] = TensorNames.Suffix.V,
        ["self_attn.q_proj.bias"] = TensorNames.Suffix.QBias,
        ["self_attn.k_proj.bias"] = TensorNames.Suffix.KBias,
        ["self_attn.v_proj.bias"] = TensorNames.Suffix.VBias,
        ["self_attn.o_proj.weight"] = TensorNames.Suffix.AttnOutput,
        ["self_attn.q_norm.weight"] = TensorNames.Suffix.QNorm,
        ["self_attn.k_norm.weight"] = TensorNames.Suffix.KNorm,
        ["post_attention_layernorm.weight"] = TensorNames.Suffix.FfnNorm,
        ["mlp.gate_proj.weight"] = TensorNames.Suffix.FfnGate,
        ["mlp.up_proj.weight"] = TensorNames.Suffix.FfnUp,
        ["mlp.down_proj.weight"] = TensorNames.Suffix.FfnDown,
    };

    /// <summary>
    /// The canonical name of <paramref name="hfName"/>; null for tensors that carry no weights the
    /// engine needs (rotary inv_freq buffers that old checkpoints saved), and an exception-free
    /// "unknown" result (<paramref name="known"/> false) for anything else.
    /// </summary>
    public static string? ToCanonical(string hfName, out bool known)
    {
        known = true;
        switch (hfName)
        {
            case EmbedTokens: return TensorNames.TokenEmbedding;
            case "model.norm.weight": return TensorNames.OutputNorm;
            case LmHead: return TensorNames.Output;
        }
        const string prefix = "model.layers.";
        if (hfName.StartsWith(prefix, StringComparison.Ordinal))
        {
            int dot = hfName.IndexOf('.', prefix.Length);
            if (dot > prefix.Length && int.TryParse(hfName.AsSpan(prefix.Length, dot - prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out int layer))
            {
                string suffix = hfName[(dot + 1)..];
                if (LayerSuffixes.TryGetValue(suffix, out var canonical)) return TensorNames.Layer(layer, canonical);
                if (suffix == "self_attn.rotary_emb.inv_freq") return null; // recomputed from the config
            }
        }
        known = false;
        return null;
    }
}
