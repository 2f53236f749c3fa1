using KvSharp.Cache.Blocks;

namespace KvSharp.Cache.Paged;

public sealed partial class PagedKvCache
{
    /// <summary>
    /// The head (layer, KV head) reads, a shared layer resolved to its source: what a device copy of the cache
    /// (Compute/Cuda/Model/CudaPagedKvCache) copies block by block.
    /// </summary>
    internal HeadStore ReadStore(int layer, int kvHead) => Store(layer, kvHead);

    /// <summary>
    /// Fills the empty head (layer, KV head) with a device cache's blocks read back (raw bytes in their layouts, each with
    /// its ascending positions) and its float residual rows as the tail: the way back of <see cref="ReadStore"/>.
    /// </summary>
    /// <exception cref="KvSharpException">A block's layouts are not this cache's geometry.</exception>
    internal void RestoreHead(int layer, int kvHead, IReadOnlyList<(BlockLayout Keys, BlockLayout Values, int[] Positions, byte[] KeyBytes, byte[] ValueBytes)> blocks,
        int[] tailPositions, ReadOnlySpan<float> tailKeys, ReadOnlySpan<float> tailValues) =>
        OwnStore(layer, kvHead, "restore").Restore(blocks.Select(b => (_pools.Formats(b.Keys, b.Values), b.Positions, b.KeyBytes, b.ValueBytes)).ToList(),
            tailPositions, tailKeys, tailValues, keyBalance: null);

    /// <summary>Sets every layer's length (the next position) after <see cref="RestoreHead"/> filled the heads.</summary>
    internal void RestoreLength(int length) => Array.Fill(_layerLength, length);
}
