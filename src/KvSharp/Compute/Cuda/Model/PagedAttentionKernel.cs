namespace KvSharp.Compute.Cuda.Model;

/// <summary>Which decode attention kernel reads a <see cref="CudaPagedKvCache"/> (all compute the same attention; docs/cuda.md).</summary>
public enum PagedAttentionKernel
{
    /// <summary><c>paged_attn_g*</c>: lane l owns fixed channels of every token (CUDA cores; every supported shape).</summary>
    LaneChannels,

    /// <summary><c>paged_attn_w_g*</c>: 16-byte key loads of several tokens per warp step (CUDA cores; every supported shape).</summary>
    Wide,

    /// <summary>
    /// <c>paged_attn_t_g*</c>: scores and values through tensor-core mma with codes unpacked to exact f16 and the query and
    /// probabilities split into two f16 parts (head dimension 128, value groups of 32, 64 or 128 channels).
    /// </summary>
    TensorCores,

    /// <summary>
    /// <c>paged_attn_p_g*</c>: the tensor-core arithmetic with each warp streaming its blocks into a shared-memory ring
    /// through the bulk copy engine and an online softmax in registers (head dimension 128, value groups of 32, 64 or 128).
    /// </summary>
    Pipelined,

    /// <summary>
    /// <c>paged_attn_vid_g*</c> (paged_attention_vidkv.cu): reads VidKV blocks (keys through the query-side inverse DFT, values
    /// widened per token) and every other format element by element; the kernel of caches that hold VidKV blocks, and the
    /// only one that reads them (CUDA cores; every supported shape).
    /// </summary>
    VidKv,
}
