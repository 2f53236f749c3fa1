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

    /// <summary>Bytes of (layer, KV head): its blocks plus its float tail.</summary>
    public long BytesByLayerHead(int layer, int kvHead)
    {
        var s = Store(layer, kvHead);
        return s.KeyBlockBytes + s.ValueBlockBytes + s.TailBytes;
    }

    /// <summary>Bytes by storage format: key blocks under <see cref="PagedKvCacheOptions.KeyFormat"/>, value blocks under
    /// <see cref="PagedKvCacheOptions.ValueFormat"/>, float tails under <see cref="KvFormat.F32"/>.</summary>
    public IReadOnlyDictionary<KvFormat, long> BytesByFormat()
    {
        var d = new Dictionary<KvFormat, long>();
        void Add(KvFormat f, long n) => d[f] = d.GetValueOrDefault(f) + n;
        foreach (var s in _stores)
        {
            Add(_options.KeyFormat, s.KeyBlockBytes);
            Add(_options.ValueFormat, s.ValueBlockBytes);
            Add(KvFormat.F32, s.TailBytes);
        }
        return d;
    }

    /// <summary>Tokens stored across all (layer, KV head) pairs (after eviction).</summary>
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

    /// <summary>Blocks allocated in the pools this cache shares with its forks.</summary>
    public long PoolLiveBlocks => _pools.LiveBlocks;
}
