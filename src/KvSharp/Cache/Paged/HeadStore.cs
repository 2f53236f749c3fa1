using System.Runtime.InteropServices;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Pool;

namespace KvSharp.Cache.Paged;

/// <summary>
/// One encoded block pair of a head: key block, value block, the tokens they hold (≤ BlockTokens) and their
/// formats (blocks of one head may differ: mixed precision by token).
/// </summary>
internal readonly record struct BlockEntry(BlockId Key, BlockId Value, int Count, BlockFormats Formats)
{
    /// <summary>Layout of the key block.</summary>
    public BlockLayout KeyLayout => Formats.KeyLayout;

    /// <summary>Layout of the value block.</summary>
    public BlockLayout ValueLayout => Formats.ValueLayout;

    /// <summary>The key block's bytes (the pool's block: at least <see cref="BlockLayout.ByteSize"/>).</summary>
    public Span<byte> KeyBytes => Formats.KeyPool.Span(Key);

    /// <summary>The value block's bytes (the pool's block: at least <see cref="BlockLayout.ByteSize"/>).</summary>
    public Span<byte> ValueBytes => Formats.ValuePool.Span(Value);
}

/// <summary>
/// The tokens of one (layer, KV head): encoded blocks in position order, then a float32 tail (the KIVI residual
/// and any partial block's worth), plus the original position of every stored token. Each block holds consecutive
/// stored tokens of one format pair; blocks of different formats may alternate (mixed precision by token). Encoded
/// blocks are never written after encoding: appends go to the tail, eviction, re-quantization and truncation build
/// fresh blocks, so blocks shared with forks (reference count &gt; 1) are copy-on-write by construction.
/// </summary>
internal sealed class HeadStore
{
    private readonly PoolSet _pools;
    private readonly int _headDim;
    private readonly List<BlockEntry> _blocks = new();
    private readonly List<int> _positions = new();
    private float[] _tailKeys = Array.Empty<float>(), _tailValues = Array.Empty<float>();
    private int _tailCount;

    public HeadStore(PoolSet pools, int headDim) { _pools = pools; _headDim = headDim; }

    /// <summary>The encoded blocks in position order, each with its own <see cref="BlockEntry.KeyLayout"/> and <see cref="BlockEntry.ValueLayout"/>.</summary>
    public IReadOnlyList<BlockEntry> Blocks => _blocks;

    /// <summary>Token capacity of every block.</summary>
    public int BlockTokens => _pools.BlockTokens;

    /// <summary>Original positions of the stored tokens, ascending (blocks first, then the tail).</summary>
    public IReadOnlyList<int> Positions => _positions;

    public int TailCount => _tailCount;
    public ReadOnlySpan<float> TailKeys => _tailKeys.AsSpan(0, _tailCount * _headDim);
    public ReadOnlySpan<float> TailValues => _tailValues.AsSpan(0, _tailCount * _headDim);

    /// <summary>Bytes held: encoded blocks at their own layouts' exact size plus the float tail.</summary>
    public long KeyBlockBytes => _blocks.Sum(e => (long)e.KeyLayout.ByteSize);
    public long ValueBlockBytes => _blocks.Sum(e => (long)e.ValueLayout.ByteSize);
    public long TailBytes => 2L * _tailCount * _headDim * sizeof(float);

    /// <summary>Adds this head's bytes to <paramref name="bytes"/> by format: every block under its own formats, the tail under F32.</summary>
    public void AddBytesByFormat(Dictionary<KvFormat, long> bytes)
    {
        void Add(KvFormat f, long n) { if (n > 0) bytes[f] = bytes.GetValueOrDefault(f) + n; }
        foreach (var e in _blocks)
        {
            Add(e.KeyLayout.Format, e.KeyLayout.ByteSize);
            Add(e.ValueLayout.Format, e.ValueLayout.ByteSize);
        }
        Add(KvFormat.F32, TailBytes);
    }

    /// <summary>Adds one token at <paramref name="position"/> to the tail.</summary>
    public void Append(int position, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        if (_positions.Count > 0 && position <= _positions[^1])
            throw new InvalidOperationException($"position {position} appended after {_positions[^1]}");
        EnsureTail(_tailCount + 1);
        key.CopyTo(_tailKeys.AsSpan(_tailCount * _headDim, _headDim));
        value.CopyTo(_tailValues.AsSpan(_tailCount * _headDim, _headDim));
        _tailCount++;
        _positions.Add(position);
    }

    /// <summary>Once the tail holds <paramref name="threshold"/> tokens, encodes every full block's worth of it in the cache's formats.</summary>
    public void Flush(int threshold)
    {
        int b = BlockTokens, d = _headDim;
        if (_tailCount < threshold || _tailCount < b) return;
        int full = _tailCount / b;
        for (int i = 0; i < full; i++)
            _blocks.Add(Encode(_pools.Default, _tailKeys.AsSpan(i * b * d, b * d), _tailValues.AsSpan(i * b * d, b * d), b));
        DropTailFront(full * b);
    }

    /// <summary>
    /// Drops every token at position ≥ <paramref name="length"/>. The block holding the cut is decoded; if it is in the
    /// cache's own formats its kept rows become the float tail, so the head looks like one built from the shorter
    /// history (for quantized formats those rows carry one quantization step, which re-encoding may round again);
    /// a block of other formats (re-quantized tokens) is re-encoded as a partial block in its formats, so every kept
    /// token keeps its format.
    /// </summary>
    public void Truncate(int length)
    {
        int cut = _positions.Count;
        while (cut > 0 && _positions[cut - 1] >= length) cut--;
        if (cut == _positions.Count) return;
        int blocked = _positions.Count - _tailCount;
        if (cut >= blocked)
        {
            _tailCount = cut - blocked;
        }
        else
        {
            int start = 0, i = 0;
            while (start + _blocks[i].Count <= cut) start += _blocks[i++].Count;
            int kept = cut - start;
            var cutBlock = _blocks[i];
            EnsureTail(cutBlock.Count); // Decode writes the whole block's rows
            if (kept > 0) Decode(cutBlock, _tailKeys, _tailValues);
            for (int j = i; j < _blocks.Count; j++) Release(_blocks[j]);
            _blocks.RemoveRange(i, _blocks.Count - i);
            _tailCount = 0;
            if (ReferenceEquals(cutBlock.Formats, _pools.Default)) _tailCount = kept;
            else if (kept > 0) // re-quantized tokens keep their formats: a partial block, not the tail
                _blocks.Add(Encode(cutBlock.Formats, _tailKeys.AsSpan(0, kept * _headDim), _tailValues.AsSpan(0, kept * _headDim), kept));
        }
        _positions.RemoveRange(cut, _positions.Count - cut);
    }

    /// <summary>
    /// Removes the stored tokens whose <paramref name="evict"/> flag is set (one flag per stored token, in order).
    /// Blocks without evicted tokens are kept as they are; the kept tokens of each run of affected blocks are
    /// decoded and re-encoded, each in its own block's formats, into fresh blocks (a run of one format pair may end
    /// in a partial block). Float formats re-encode their decoded values exactly; quantized formats re-quantize
    /// already-quantized values, which adds at most one more quantization step (the new group's range lies inside
    /// the old one's).
    /// </summary>
    public void Evict(ReadOnlySpan<bool> evict)
    {
        CheckMask(evict, "eviction");
        Rewrite(evict, null);
        int w = 0;
        for (int i = 0; i < _positions.Count; i++) if (!evict[i]) _positions[w++] = _positions[i];
        _positions.RemoveRange(w, _positions.Count - w);
    }

    /// <summary>
    /// Re-encodes the stored tokens flagged in <paramref name="select"/> (one flag per stored token, in order) in
    /// <paramref name="target"/>'s formats; the others keep theirs. Blocks with no flagged token, or already in the
    /// target formats, are kept as they are; the tokens of the other blocks are decoded and re-encoded into fresh
    /// blocks, one per run of consecutive tokens of one format pair. Flagged tail tokens are encoded at once (in
    /// partial blocks if need be); the unflagged tail tokens before the last flagged one are encoded as F32 blocks
    /// (losslessly: they keep the tail's float32), those after it stay in the tail.
    /// </summary>
    public void Requantize(ReadOnlySpan<bool> select, BlockFormats target)
    {
        CheckMask(select, "re-quantization");
        Rewrite(select, target);
    }

    /// <summary>A copy sharing every encoded block (each retained once more).</summary>
    public HeadStore Fork()
    {
        var copy = new HeadStore(_pools, _headDim);
        foreach (var e in _blocks)
        {
            e.Formats.KeyPool.Retain(e.Key);
            e.Formats.ValuePool.Retain(e.Value);
            copy._blocks.Add(e);
        }
        copy._positions.AddRange(_positions);
        copy._tailKeys = (float[])_tailKeys.Clone();
        copy._tailValues = (float[])_tailValues.Clone();
        copy._tailCount = _tailCount;
        return copy;
    }

    /// <summary>Releases every block and forgets every token.</summary>
    public void Clear()
    {
        foreach (var e in _blocks) Release(e);
        _blocks.Clear();
        _positions.Clear();
        _tailCount = 0;
    }

    /// <summary>Decodes every stored token (blocks, then the tail) into [Positions.Count, headDim] keys and values.</summary>
    public void Read(Span<float> keys, Span<float> values)
    {
        int row = 0, d = _headDim;
        foreach (var e in _blocks)
        {
            Decode(e, keys.Slice(row * d, e.Count * d), values.Slice(row * d, e.Count * d));
            row += e.Count;
        }
        TailKeys.CopyTo(keys.Slice(row * d));
        TailValues.CopyTo(values.Slice(row * d));
    }

    /// <summary>Decodes block <paramref name="e"/>'s rows into [Count, headDim] arrays (for re-encoding).</summary>
    public static void Decode(BlockEntry e, Span<float> keys, Span<float> values)
    {
        BlockCodec.Decode(e.KeyLayout, e.KeyBytes, e.Count, keys);
        BlockCodec.Decode(e.ValueLayout, e.ValueBytes, e.Count, values);
    }

    /// <summary>
    /// Adds an encoded block pair (raw block bytes in their formats' layouts) and the float tail, for a
    /// store being loaded from a file: <paramref name="positions"/> cover the blocks' tokens and then the tail's.
    /// </summary>
    public void Restore(IReadOnlyList<(BlockFormats Formats, int Count, byte[] Keys, byte[] Values)> blocks,
        IReadOnlyList<int> positions, ReadOnlySpan<float> tailKeys, ReadOnlySpan<float> tailValues)
    {
        if (_positions.Count > 0) throw new InvalidOperationException("restoring into a non-empty head");
        foreach (var (formats, count, keys, values) in blocks)
        {
            var k = formats.KeyPool.Allocate();
            var v = formats.ValuePool.Allocate();
            keys.CopyTo(formats.KeyPool.Span(k));
            values.CopyTo(formats.ValuePool.Span(v));
            _blocks.Add(new BlockEntry(k, v, count, formats));
        }
        _positions.AddRange(positions);
        _tailCount = tailKeys.Length / _headDim;
        EnsureTail(_tailCount);
        tailKeys.CopyTo(_tailKeys);
        tailValues.CopyTo(_tailValues);
    }

    private void CheckMask(ReadOnlySpan<bool> mask, string what)
    {
        if (mask.Length != _positions.Count)
            throw new ArgumentException($"{what} mask has {mask.Length} flags but the head stores {_positions.Count} tokens", nameof(mask));
    }

    /// <summary>
    /// Rebuilds the blocks and tail for a mask: with <paramref name="target"/> null the flagged tokens are dropped
    /// (eviction), otherwise they move to <paramref name="target"/> (re-quantization). Positions are the caller's.
    /// </summary>
    private void Rewrite(ReadOnlySpan<bool> flags, BlockFormats? target)
    {
        int b = BlockTokens, d = _headDim;
        var kept = new List<BlockEntry>(_blocks.Count);
        var pending = new PendingRows(this, kept);
        var rowK = new float[b * d]; var rowV = new float[b * d];
        int start = 0;
        foreach (var e in _blocks)
        {
            bool touched = flags.Slice(start, e.Count).Contains(true) && !ReferenceEquals(target, e.Formats);
            if (!touched)
            {
                pending.Encode();
                kept.Add(e);
            }
            else
            {
                Decode(e, rowK, rowV);
                for (int t = 0; t < e.Count; t++)
                {
                    var formats = !flags[start + t] ? e.Formats : target;
                    if (formats is not null) pending.Add(formats, rowK.AsSpan(t * d, d), rowV.AsSpan(t * d, d));
                }
                Release(e);
            }
            start += e.Count;
        }

        var tailFlags = flags.Slice(start, _tailCount);
        if (target is null)
        {
            int tailKept = 0;
            for (int t = 0; t < _tailCount; t++)
            {
                if (tailFlags[t]) continue;
                if (tailKept != t)
                {
                    _tailKeys.AsSpan(t * d, d).CopyTo(_tailKeys.AsSpan(tailKept * d));
                    _tailValues.AsSpan(t * d, d).CopyTo(_tailValues.AsSpan(tailKept * d));
                }
                tailKept++;
            }
            _tailCount = tailKept;
        }
        else if (tailFlags.LastIndexOf(true) is var last and >= 0)
        {
            // Blocks precede the tail, so the tail up to its last flagged token leaves it: flagged rows in the target
            // formats, the others as F32 blocks (their float32 values unchanged).
            var f32 = _pools.Formats(KvFormat.F32, KvFormat.F32);
            for (int t = 0; t <= last; t++)
                pending.Add(tailFlags[t] ? target : f32, _tailKeys.AsSpan(t * d, d), _tailValues.AsSpan(t * d, d));
            DropTailFront(last + 1);
        }
        pending.Encode();
        _blocks.Clear();
        _blocks.AddRange(kept);
    }

    /// <summary>Rows waiting to be encoded: consecutive tokens of one format pair, written out as blocks when the pair changes.</summary>
    private sealed class PendingRows(HeadStore store, List<BlockEntry> into)
    {
        private readonly List<float> _keys = new(), _values = new();
        private BlockFormats? _formats;

        public void Add(BlockFormats formats, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
        {
            if (!ReferenceEquals(formats, _formats)) Encode();
            _formats = formats;
            _keys.AddRange(key);
            _values.AddRange(value);
        }

        public void Encode()
        {
            int b = store.BlockTokens, d = store._headDim, n = _keys.Count / d;
            var k = CollectionsMarshal.AsSpan(_keys);
            var v = CollectionsMarshal.AsSpan(_values);
            for (int s = 0; s < n; s += b)
            {
                int c = Math.Min(b, n - s);
                into.Add(store.Encode(_formats!, k.Slice(s * d, c * d), v.Slice(s * d, c * d), c));
            }
            _keys.Clear(); _values.Clear();
        }
    }

    private BlockEntry Encode(BlockFormats formats, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
    {
        var k = formats.KeyPool.Allocate();
        var v = formats.ValuePool.Allocate();
        BlockCodec.Encode(formats.KeyLayout, keys, count, formats.KeyPool.Span(k));
        BlockCodec.Encode(formats.ValueLayout, values, count, formats.ValuePool.Span(v));
        return new BlockEntry(k, v, count, formats);
    }

    private static void Release(BlockEntry e)
    {
        e.Formats.KeyPool.Release(e.Key);
        e.Formats.ValuePool.Release(e.Value);
    }

    /// <summary>Removes the first <paramref name="n"/> tail rows (they were encoded into blocks).</summary>
    private void DropTailFront(int n)
    {
        int rest = _tailCount - n, d = _headDim;
        _tailKeys.AsSpan(n * d, rest * d).CopyTo(_tailKeys);
        _tailValues.AsSpan(n * d, rest * d).CopyTo(_tailValues);
        _tailCount = rest;
    }

    private void EnsureTail(int tokens)
    {
        int need = tokens * _headDim;
        if (_tailKeys.Length >= need) return;
        int cap = Math.Max(need, Math.Max(_tailKeys.Length * 2, BlockTokens * _headDim));
        Array.Resize(ref _tailKeys, cap);
        Array.Resize(ref _tailValues, cap);
    }
}
