namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>
/// When the pipelined attention's batch launches let each warp claim its blocks from its head's pool instead of reading a
/// fixed run of them (<see cref="CudaPagedKernels.BlockClaims"/>; paged_attention_tc.cu, STEAL).
/// </summary>
internal enum PipelinedBlockClaims
{
    /// <summary>Fixed runs always.</summary>
    Off,

    /// <summary>Claims where they measured faster: <see cref="CudaPagedKernels.ClaimsPay"/>.</summary>
    Measured,

    /// <summary>Claims in every batch launch whose build can take them (the checks' and the benchmark's A/B).</summary>
    Always,
}
