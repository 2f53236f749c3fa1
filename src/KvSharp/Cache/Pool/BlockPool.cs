namespace KvSharp.Cache.Pool;

/// <summary>A block in a <see cref="BlockPool"/>: slab and slot, packed in one int (-1 = none).</summary>
public readonly record struct BlockId(int Value)
{
    /// <summary>No block.</summary>
    public static BlockId None => new(-1);

    /// <summary>Whether this id refers to a block.</summary>
    public bool IsValid => Value >= 0;
}

/// <summary>
/// Fixed-size blocks carved out of page-allocated slabs, with reference counts for copy-on-write
/// sharing. Blocks of one pool have one byte size (a pool per block layout). The process's resident
/// memory follows the cache's size: a slab whose blocks are all free is unmapped at once, and inside a
/// slab still in use every page left without a live block is handed back to the OS
/// (<see cref="PageMemory.Discard"/>), so eviction that keeps scattered blocks frees memory too.
/// Not thread-safe: one cache owns its pools.
/// </summary>
public sealed unsafe class BlockPool : IDisposable
{
    private const int SlotBits = 12;             // up to 4096 blocks per slab
    private const int SlabTargetBytes = 1 << 20; // ~1 MiB slabs: small enough that freeing shows quickly

    private static readonly int PageBytes = Environment.SystemPageSize;

    private readonly List<Slab?> _slabs = new();
    private readonly Stack<int> _freeSlabIndices = new();
    private long _liveBlocks, _livePages;

    private sealed class Slab
    {
        public byte* Memory;
        public nuint Bytes;
        public int[] RefCounts = Array.Empty<int>();
        public int[] PageBlocks = Array.Empty<int>(); // live blocks touching each page
        public Stack<int> FreeSlots = new();
        public int Used;
    }

    /// <summary>Creates a pool of blocks of <paramref name="blockBytes"/> bytes (rounded up to 64).</summary>
    public BlockPool(int blockBytes)
    {
        if (blockBytes <= 0) throw new ArgumentOutOfRangeException(nameof(blockBytes));
        BlockBytes = (blockBytes + 63) & ~63;
        BlocksPerSlab = Math.Clamp(SlabTargetBytes / BlockBytes, 1, 1 << SlotBits);
    }

    /// <summary>Bytes of one block (64-byte aligned).</summary>
    public int BlockBytes { get; }

    /// <summary>Blocks carved from one slab.</summary>
    public int BlocksPerSlab { get; }

    /// <summary>Blocks currently allocated.</summary>
    public long LiveBlocks => _liveBlocks;

    /// <summary>Bytes of blocks currently allocated.</summary>
    public long LiveBytes => _liveBlocks * BlockBytes;

    /// <summary>Bytes obtained from the OS (live slabs).</summary>
    public long ReservedBytes { get; private set; }

    /// <summary>
    /// Bytes of the pages holding at least one live block: what the pool can have resident. Pages of freed blocks
    /// are discarded (on Linux), so this, not <see cref="ReservedBytes"/>, is what eviction lowers.
    /// </summary>
    public long PageBytesInUse => _livePages * PageBytes;

    /// <summary>Allocates a zeroed block with reference count 1.</summary>
    public BlockId Allocate()
    {
        int slabIndex = -1;
        for (int i = _slabs.Count - 1; i >= 0; i--)
            if (_slabs[i] is { } s && s.FreeSlots.Count > 0) { slabIndex = i; break; }
        if (slabIndex < 0) slabIndex = NewSlab();
        var slab = _slabs[slabIndex]!;
        int slot = slab.FreeSlots.Pop();
        slab.RefCounts[slot] = 1;
        slab.Used++;
        _liveBlocks++;
        var (first, last) = Pages(slot);
        for (int p = first; p <= last; p++)
            if (slab.PageBlocks[p]++ == 0) _livePages++;
        new Span<byte>(slab.Memory + (nint)slot * BlockBytes, BlockBytes).Clear();
        return new BlockId((slabIndex << SlotBits) | slot);
    }

    /// <summary>Adds a reference (a fork now shares the block).</summary>
    public void Retain(BlockId id)
    {
        var (slab, slot) = Locate(id);
        slab.RefCounts[slot]++;
    }

    /// <summary>Number of owners of <paramref name="id"/>.</summary>
    public int RefCount(BlockId id)
    {
        var (slab, slot) = Locate(id);
        return slab.RefCounts[slot];
    }

    /// <summary>Drops a reference; the last one frees the block (and its slab when empty).</summary>
    public void Release(BlockId id)
    {
        var (slab, slot) = Locate(id);
        if (--slab.RefCounts[slot] > 0) return;
        slab.FreeSlots.Push(slot);
        slab.Used--;
        _liveBlocks--;
        // Pages this block was the last live block on go back to the OS; they are contiguous (the block's own
        // interior, plus its first/last page when the neighbours sharing them are free too).
        var (first, last) = Pages(slot);
        int from = -1, to = -1;
        for (int p = first; p <= last; p++)
        {
            if (--slab.PageBlocks[p] > 0) continue;
            _livePages--;
            if (from < 0) from = p;
            to = p;
        }
        if (slab.Used > 0 && from >= 0)
            PageMemory.Discard(slab.Memory + (nint)from * PageBytes, (nuint)((long)(to - from + 1) * PageBytes));
        if (slab.Used == 0)
        {
            int index = id.Value >> SlotBits;
            PageMemory.Free(slab.Memory, slab.Bytes);
            ReservedBytes -= (long)slab.Bytes;
            _slabs[index] = null;
            _freeSlabIndices.Push(index);
        }
    }

    /// <summary>Address of the block's first byte (valid until it is released).</summary>
    public byte* Pointer(BlockId id)
    {
        var (slab, slot) = Locate(id);
        return slab.Memory + (nint)slot * BlockBytes;
    }

    /// <summary>The block's bytes.</summary>
    public Span<byte> Span(BlockId id) => new(Pointer(id), BlockBytes);

    /// <summary>First and last page (of its slab) that block <paramref name="slot"/> touches.</summary>
    private (int First, int Last) Pages(int slot)
    {
        long start = (long)slot * BlockBytes;
        return ((int)(start / PageBytes), (int)((start + BlockBytes - 1) / PageBytes));
    }

    private (Slab Slab, int Slot) Locate(BlockId id)
    {
        int index = id.Value >> SlotBits, slot = id.Value & ((1 << SlotBits) - 1);
        if (!id.IsValid || index >= _slabs.Count || _slabs[index] is not { } slab || slot >= BlocksPerSlab || slab.RefCounts[slot] <= 0)
            throw new InvalidOperationException($"block {id.Value} is not allocated");
        return (slab, slot);
    }

    private int NewSlab()
    {
        var bytes = (nuint)((long)BlocksPerSlab * BlockBytes);
        var slab = new Slab
        {
            Memory = PageMemory.Allocate(bytes),
            Bytes = bytes,
            RefCounts = new int[BlocksPerSlab],
            PageBlocks = new int[(int)(((long)bytes + PageBytes - 1) / PageBytes)],
        };
        for (int s = BlocksPerSlab - 1; s >= 0; s--) slab.FreeSlots.Push(s);
        ReservedBytes += (long)bytes;
        if (_freeSlabIndices.Count > 0)
        {
            int i = _freeSlabIndices.Pop();
            _slabs[i] = slab;
            return i;
        }
        if (_slabs.Count >= 1 << (31 - SlotBits)) throw new OutOfMemoryException("KV block pool exhausted");
        _slabs.Add(slab);
        return _slabs.Count - 1;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        for (int i = 0; i < _slabs.Count; i++)
        {
            if (_slabs[i] is not { } s) continue;
            PageMemory.Free(s.Memory, s.Bytes);
            _slabs[i] = null;
        }
        ReservedBytes = 0;
        _liveBlocks = 0;
        _livePages = 0;
    }
}
