namespace KvSharp.Cache.Paged;

public sealed partial class PagedKvCache
{
    /// <summary>
    /// The head (layer, KV head) reads, a shared layer resolved to its source: what a device copy of the cache
    /// (Compute/Cuda/Model/CudaPagedKvCache) copies block by block.
    /// </summary>
    internal HeadStore ReadStore(int layer, int kvHead) => Store(layer, kvHead);
}
