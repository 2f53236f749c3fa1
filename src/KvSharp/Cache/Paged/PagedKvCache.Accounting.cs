using KvSharp.Cache.Blocks;

namespace KvSharp.Cache.Paged;

/// <summary>Byte accounting of <see cref="PagedKvCache"/>.</summary>
public sealed partial class PagedKvCache
{
    /// <inheritdoc />
    /// <remarks>
    /// Exact bytes this cache references: every encoded block at its layout's <see cref="BlockLayout.ByteSize"/>
    /// plus the float32 tail rows. A block shared with a fork counts in each cache that references it;
    /// <see cref="PoolLiveBytes"/> counts it once. Per-token positions (4 bytes each) are bookkeeping, not counted.
    /// </remarks>
    public long ByteCount => _stores.Sum(s => s.KeyBlockBytes + s.ValueBlockBytes + s.TailBytes);

    /// <summary>Bytes of (layer, KV head): its blocks plus its float tail (0 for a layer sharing another's storage: counted once, at the source).</summary>
    public long BytesByLayerHead(int layer, int kvHead)
    {
        var s = StoreOf(layer, kvHead);
        return s.KeyBlockBytes + s.ValueBlockBytes + s.TailBytes;
    }

    /// <summary>Bytes by storage format: each key and value block under its own format, float tails under <see cref="KvFormat.F32"/>.</summary>
    public IReadOnlyDictionary<KvFormat, long> BytesByFormat()
    {
        var d = new Dictionary<KvFormat, long>();
        foreach (var s in _stores) s.AddBytesByFormat(d);
        return d;
    }

    /// <summary>Bytes by storage format of (layer, KV head), as <see cref="BytesByFormat()"/> counts them (empty for a shared layer).</summary>
    public IReadOnlyDictionary<KvFormat, long> BytesByFormat(int layer, int kvHead)
    {
        var d = new Dictionary<KvFormat, long>();
        StoreOf(layer, kvHead).AddBytesByFormat(d);
        return d;
    }

    /// <summary>Tokens stored across all (layer, KV head) pairs (after eviction; a shared layer stores none).</summary>
    public long StoredTokens => _stores.Sum(s => (long)s.Positions.Count);

    /// <summary>
    /// Bytes an F16 cache of the same logical length would use (every layer's tokens × KV heads × head dimension ×
    /// 2 bytes, keys and values) divided by <see cref="ByteCount"/>: the gain from the formats and from eviction
    /// together. 1 for an empty cache.
    /// </summary>
    public double CompressionRatio
    {
        get
        {
            long f16 = 0;
            for (int l = 0; l < _layers; l++) f16 += 2L * _layerLength[l] * _kvHeads * _headDim * sizeof(ushort);
            long bytes = ByteCount;
            return bytes == 0 ? 1.0 : (double)f16 / bytes;
        }
    }

    /// <summary>Bytes of blocks allocated in the pools this cache shares with its forks (a shared block counts once).</summary>
    public long PoolLiveBytes => _pools.LiveBytes;

    /// <summary>
    /// Bytes of memory the pools hold from the operating system (whole slabs: at least <see cref="PoolLiveBytes"/>).
    /// A slab is unmapped as soon as its last block is freed.
    /// </summary>
    public long PoolReservedBytes => _pools.ReservedBytes;

    /// <summary>
    /// Bytes of the memory pages holding live blocks: what the pools can keep resident (pages left without a live
    /// block are returned to the OS on Linux, slabs without one everywhere). At least <see cref="PoolLiveBytes"/>.
    /// </summary>
    public long PoolPageBytesInUse => _pools.PageBytesInUse;

    /// <summary>Blocks allocated in the pools this cache shares with its forks.</summary>
    public long PoolLiveBlocks => _pools.LiveBlocks;
}
