namespace KvSharp.Compute.Cuda;

/// <summary>
/// A CUDA driver, NVRTC or cuBLAS call failed, or no usable GPU was found. The message names the call and
/// the library's own description of the error (for example "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (out of memory)").
/// </summary>
public sealed class CudaException : KvSharpException
{
    /// <summary>Creates an error for <paramref name="call"/> with the library's <paramref name="description"/>.</summary>
    public CudaException(string call, string description) : base($"{call}: {description}") { Call = call; }

    private CudaException(string message) : base(message) { Call = ""; }

    /// <summary>"CUDA unavailable: <paramref name="reason"/>": no driver, no device, or the requested device is missing.</summary>
    public static CudaException Unavailable(string reason) => new($"CUDA unavailable: {reason}");

    /// <summary>The failing API call, or empty when the message is not about one call.</summary>
    public string Call { get; }
}
