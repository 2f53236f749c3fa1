namespace KvSharp.Models;

/// <summary>
/// Canonical tensor names (GGUF's), which every loader maps its file's names to, so the
/// transformer reads one naming scheme whatever the source format.
/// </summary>
public static class TensorNames
{
    /// <summary>Token embedding [vocab, hidden].</summary>
    public const string TokenEmbedding = "token_embd.weight";
    /// <summary>Final RMSNorm weight [hidden].</summary>
    public const string OutputNorm = "output_norm.weight";
    /// <summary>Output projection [vocab, hidden] (absent when tied).</summary>
    public const string Output = "output.weight";

    /// <summary>Name of a per-layer tensor, e.g. Layer(3, "attn_q.weight") = "blk.3.attn_q.weight".</summary>
    public static string Layer(int layer, string suffix) => $"blk.{layer}.{suffix}";

    /// <summary>Per-layer suffixes.</summary>
    public static class Suffix
    {
        /// <summary>Pre-attention RMSNorm.</summary>
        public const string AttnNorm = "attn_norm.weight";
        /// <summary>Query projection [heads*headDim, hidden].</summary>
        public const string Q = "attn_q.weight";
        /// <summary>Key projection [kvHeads*headDim, hidden].</summary>
        public const string K = "attn_k.weight";
        /// <summary>Value projection [kvHeads*headDim, hidden].</summary>
        public const string V = "attn_v.weight";
        /// <summary>Query bias (Qwen2).</summary>
        public const string QBias = "attn_q.bias";
        /// <summary>Key bias (Qwen2).</summary>
        public const string KBias = "attn_k.bias";
        /// <summary>Value bias (Qwen2).</summary>
        public const string VBias = "attn_v.bias";
        /// <summary>Per-head query RMSNorm [headDim] (Qwen3).</summary>
        public const string QNorm = "attn_q_norm.weight";
        /// <summary>Per-head key RMSNorm [headDim] (Qwen3).</summary>
        public const string KNorm = "attn_k_norm.weight";
        /// <summary>Attention output projection [hidden, heads*headDim].</summary>
        public const string AttnOutput = "attn_output.weight";
        /// <summary>Pre-FFN RMSNorm.</summary>
        public const string FfnNorm = "ffn_norm.weight";
        /// <summary>SwiGLU gate [ffn, hidden].</summary>
        public const string FfnGate = "ffn_gate.weight";
        /// <summary>SwiGLU up [ffn, hidden].</summary>
        public const string FfnUp = "ffn_up.weight";
        /// <summary>SwiGLU down [hidden, ffn].</summary>
        public const string FfnDown = "ffn_down.weight";
    }
}
