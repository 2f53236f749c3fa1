namespace KvSharp.Compute.Cpu;

/// <summary>Which float32 arithmetic the CPU forward pass uses.</summary>
public enum CpuNumerics
{
    /// <summary>The engine's own kernels: fastest, float32-accurate, summed in whatever order is quickest.</summary>
    Fast,

    /// <summary>
    /// llama.cpp's CPU (ggml, AVX2 build) arithmetic: its summation orders, RMSNorm, RoPE, exp, an f16 KV cache and its
    /// f16-accumulator flash attention, and only the logits row through the last layer's FFN. With F32 weights the logits
    /// equal llama.cpp's bit for bit (docs/exactness.md says which cases are covered).
    /// </summary>
    LlamaCpp,
}
