namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>The VidKV attention kernel (paged_attention_vidkv.cu), compiled on first use: caches without VidKV blocks never need it.</summary>
internal sealed partial class CudaPagedKernels
{
    private CudaModule? _vidKvAttention;

    private CudaModule VidKvAttention
    {
        get
        {
            lock (PerDevice) return _vidKvAttention ??= CudaModule.LoadEmbedded(_device, "paged_attention_vidkv.cu");
        }
    }

    /// <summary>
    /// What the VidKV kernel needs beyond the tables: the device address of the float32 real-DFT bases of every block length
    /// up to the cache's block tokens (<see cref="Model.CudaPagedKvCache"/> uploads them), the outlier channels of the cache's
    /// VidKV key blocks and the salient tokens of its VidKV value blocks.
    /// </summary>
    public readonly record struct VidKvTables(ulong Basis, int Outliers, int Salient);
}
