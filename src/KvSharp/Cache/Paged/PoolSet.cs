using KvSharp.Cache.Blocks;
using KvSharp.Cache.Pool;

namespace KvSharp.Cache.Paged;

/// <summary>
/// The block pools of one cache and all its forks: the key pool and value pool (one object when the two
/// layouts have the same byte size). Forks share the pools so a shared block is allocated once; the last
/// cache to be disposed disposes them.
/// </summary>
internal sealed class PoolSet
{
    private int _owners = 1;

    public PoolSet(BlockLayout keys, BlockLayout values)
    {
        KeyLayout = keys; ValueLayout = values;
        KeyPool = new BlockPool(keys.ByteSize);
        ValuePool = values.ByteSize == keys.ByteSize ? KeyPool : new BlockPool(values.ByteSize);
    }

    public BlockLayout KeyLayout { get; }
    public BlockLayout ValueLayout { get; }
    public BlockPool KeyPool { get; }
    public BlockPool ValuePool { get; }

    /// <summary>Distinct pools (one or two).</summary>
    public IReadOnlyList<BlockPool> Pools => ReferenceEquals(KeyPool, ValuePool) ? [KeyPool] : [KeyPool, ValuePool];

    /// <summary>Bytes of allocated blocks across the pools (a block shared by forks counts once).</summary>
    public long LiveBytes => Pools.Sum(p => p.LiveBytes);

    /// <summary>Blocks allocated across the pools.</summary>
    public long LiveBlocks => Pools.Sum(p => p.LiveBlocks);

    public void AddOwner()
    {
        if (_owners <= 0) throw new ObjectDisposedException(nameof(PagedKvCache));
        _owners++;
    }

    public void RemoveOwner()
    {
        if (--_owners > 0) return;
        foreach (var p in Pools) p.Dispose();
    }
}
