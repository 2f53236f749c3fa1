using KvSharp.Cache.Blocks;
using KvSharp.Cache.Pool;

namespace KvSharp.Cache.Paged;

/// <summary>
/// The block pools of one cache and all its forks: one <see cref="BlockPool"/> per distinct block byte size, created
/// when a block of that size is first needed, and the <see cref="BlockFormats"/> (key/value layout pair) of every
/// format pair in use. Forks share the pools so a shared block is allocated once; the last cache to be disposed
/// disposes them.
/// </summary>
internal sealed class PoolSet
{
    private readonly PagedKvCacheOptions _options;
    private readonly int _headDim;
    private readonly Dictionary<int, BlockPool> _pools = new();
    private readonly Dictionary<(KvFormat, KvFormat, bool), BlockFormats> _formats = new();
    private readonly Dictionary<(BlockLayout, BlockLayout), BlockFormats> _byLayout = new();
    private int _owners = 1;

    /// <summary>Creates the pools of a cache with <paramref name="options"/> (already validated) and head dimension.</summary>
    public PoolSet(PagedKvCacheOptions options, int headDim)
    {
        _options = options; _headDim = headDim;
        Default = Formats(options.KeyFormat, options.ValueFormat);
    }

    /// <summary>The cache's own formats: what appended tokens are encoded in.</summary>
    public BlockFormats Default { get; }

    /// <summary>Token capacity of every block.</summary>
    public int BlockTokens => _options.BlockTokens;

    /// <summary>
    /// The layout pair for keys in <paramref name="keyFormat"/> and values in <paramref name="valueFormat"/>, with the
    /// cache's block geometry (keys per channel over the block, values per token in channel groups). With
    /// <paramref name="balancedKeys"/> (quantized key formats only) keys are quantized per token over all their channels
    /// after the head's channel balance (MiKV): the blocks store Q(b⊙k) and read back as Q(b⊙k)/b.
    /// </summary>
    /// <exception cref="KvSharpException">The geometry does not suit a format, or balanced keys of a float format (the message names it).</exception>
    public BlockFormats Formats(KvFormat keyFormat, KvFormat valueFormat, bool balancedKeys = false)
    {
        if (_formats.TryGetValue((keyFormat, valueFormat, balancedKeys), out var f)) return f;
        if (balancedKeys && !keyFormat.IsQuantized())
            throw new KvSharpException($"balanced per-token keys need a quantized key format, not {keyFormat}");
        var (keys, values) = (_options with { KeyFormat = keyFormat, ValueFormat = valueFormat }).Layouts(_headDim);
        if (balancedKeys) keys = new BlockLayout(keyFormat, QuantAxis.PerToken, _headDim, keys.Tokens, _headDim);
        f = Formats(keys, values);
        _formats.Add((keyFormat, valueFormat, balancedKeys), f);
        return f;
    }

    /// <summary>
    /// The pair for explicit layouts (e.g. VidKV blocks with other parameters than the defaults); equal layouts give the
    /// same instance, as blocks of one pair are recognised by reference. Quantized keys per token are MiKV's balanced
    /// keys: the cache's own key layouts are always per channel.
    /// </summary>
    /// <exception cref="KvSharpException">A layout does not have the cache's block tokens and head dimension.</exception>
    public BlockFormats Formats(BlockLayout keys, BlockLayout values)
    {
        foreach (var layout in new[] { keys, values })
            if (layout.Tokens != BlockTokens || layout.HeadDim != _headDim)
                throw new KvSharpException($"layout {layout} does not fit this cache's blocks of {BlockTokens} tokens × {_headDim} channels");
        if (_byLayout.TryGetValue((keys, values), out var f)) return f;
        bool balancedKeys = keys.Format.IsQuantized() && keys.Axis == QuantAxis.PerToken;
        f = new BlockFormats(keys, values, Pool(keys.ByteSize), Pool(values.ByteSize), balancedKeys);
        _byLayout.Add((keys, values), f);
        return f;
    }

    /// <summary>Distinct pools created so far.</summary>
    public IEnumerable<BlockPool> Pools => _pools.Values;

    /// <summary>Bytes of allocated blocks across the pools (a block shared by forks counts once).</summary>
    public long LiveBytes => _pools.Values.Sum(p => p.LiveBytes);

    /// <summary>Blocks allocated across the pools.</summary>
    public long LiveBlocks => _pools.Values.Sum(p => p.LiveBlocks);

    /// <summary>Bytes of the pages holding live blocks (<see cref="BlockPool.PageBytesInUse"/>).</summary>
    public long PageBytesInUse => _pools.Values.Sum(p => p.PageBytesInUse);

    /// <summary>Bytes of slabs the pools hold from the operating system.</summary>
    public long ReservedBytes => _pools.Values.Sum(p => p.ReservedBytes);

    public void AddOwner()
    {
        if (_owners <= 0) throw new ObjectDisposedException(nameof(PagedKvCache));
        _owners++;
    }

    public void RemoveOwner()
    {
        if (--_owners > 0) return;
        foreach (var p in _pools.Values) p.Dispose();
    }

    private BlockPool Pool(int byteSize)
    {
        // Pools round blocks up to 64 bytes: layouts of equal rounded size share one pool (and its slabs).
        int rounded = (byteSize + 63) & ~63;
        if (!_pools.TryGetValue(rounded, out var pool)) _pools.Add(rounded, pool = new BlockPool(rounded));
        return pool;
    }
}

/// <summary>
/// The key and value layouts of a block pair and the pools their blocks come from; <see cref="BalancedKeys"/>: the key
/// block holds the head's channel-balanced keys b⊙k, quantized per token (read back divided by b).
/// </summary>
internal sealed class BlockFormats(BlockLayout keyLayout, BlockLayout valueLayout, BlockPool keyPool, BlockPool valuePool, bool balancedKeys)
{
    public BlockLayout KeyLayout { get; } = keyLayout;
    public BlockLayout ValueLayout { get; } = valueLayout;
    public BlockPool KeyPool { get; } = keyPool;
    public BlockPool ValuePool { get; } = valuePool;
    public bool BalancedKeys { get; } = balancedKeys;

    /// <inheritdoc />
    public override string ToString() => $"keys {KeyLayout}{(BalancedKeys ? " (balanced)" : "")}, values {ValueLayout}";
}
