using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Pool;

namespace KvSharp.Cache.Paged;

/// <summary>
/// One encoded block pair of a head: key block, value block, the original positions of the tokens they hold
/// (ascending, ≤ BlockTokens of them; never modified once the entry exists, so forks share the array) and their
/// formats (blocks of one head may differ: mixed precision by token).
/// </summary>
internal readonly record struct BlockEntry(BlockId Key, BlockId Value, int[] Positions, BlockFormats Formats)
{
    /// <summary>Tokens held.</summary>
    public int Count => Positions.Length;

    /// <summary>The smallest position held (positions ascend inside a block).</summary>
    public int FirstPosition => Positions[0];

    /// <summary>The largest position held.</summary>
    public int LastPosition => Positions[^1];

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
/// The tokens of one (layer, KV head): encoded blocks, then a float32 tail (the KIVI residual and any partial block's
/// worth), each token with its original position. A block holds tokens of one format pair in ascending position
/// order, but blocks are not ordered among themselves and their positions may interleave (attention is
/// order-invariant: keys are stored after RoPE, causal masks compare positions), so re-quantizing scattered tokens
/// regroups them into dense blocks of their new formats instead of splitting runs. The tail's positions ascend too.
/// Encoded blocks are never written after encoding: appends go to the tail, eviction, re-quantization and truncation
/// build fresh blocks, so blocks shared with forks (reference count &gt; 1) are copy-on-write by construction.
/// </summary>
/// <remarks>
/// Two orders: the <b>logical</b> order is ascending position (<see cref="Positions"/>; what masks, reads and the
/// public API use); the <b>storage</b> order is the blocks in list order, then the tail (what attention walks). Appends
/// and flushes only add tokens at the end of both, so statistics can follow covered tokens by storage index.
/// </remarks>
internal sealed class HeadStore
{
    private readonly PoolSet _pools;
    private readonly int _headDim;
    private readonly List<BlockEntry> _blocks = new();
    private readonly List<int> _positions = new();     // logical order: every stored position, ascending
    private readonly List<int> _tailPositions = new(); // ascending
    private float[] _tailKeys = Array.Empty<float>(), _tailValues = Array.Empty<float>();
    private float[]? _keyBalance, _keyUnbalance; // per channel, powers of two (MiKV); set before any balanced block exists

    public HeadStore(PoolSet pools, int headDim) { _pools = pools; _headDim = headDim; }

    /// <summary>The encoded blocks in storage order, each with its own positions and formats.</summary>
    public IReadOnlyList<BlockEntry> Blocks => _blocks;

    /// <summary>Token capacity of every block.</summary>
    public int BlockTokens => _pools.BlockTokens;

    /// <summary>Original positions of every stored token, ascending (the logical order of masks and reads).</summary>
    public IReadOnlyList<int> Positions => _positions;

    /// <summary><see cref="Positions"/> as a span (valid until the store changes).</summary>
    public ReadOnlySpan<int> PositionSpan => CollectionsMarshal.AsSpan(_positions);

    /// <summary>Original positions of the tail's tokens, ascending.</summary>
    public ReadOnlySpan<int> TailPositions => CollectionsMarshal.AsSpan(_tailPositions);

    public int TailCount => _tailPositions.Count;
    public ReadOnlySpan<float> TailKeys => _tailKeys.AsSpan(0, TailCount * _headDim);
    public ReadOnlySpan<float> TailValues => _tailValues.AsSpan(0, TailCount * _headDim);

    /// <summary>Bytes held: encoded blocks at their own layouts' exact size plus the float tail.</summary>
    public long KeyBlockBytes => _blocks.Sum(e => (long)e.KeyLayout.ByteSize);
    public long ValueBlockBytes => _blocks.Sum(e => (long)e.ValueLayout.ByteSize);
    public long TailBytes => 2L * TailCount * _headDim * sizeof(float);

    /// <summary>The channel balance b of the blocks with balanced keys (powers of two), or null when none was set.</summary>
    public float[]? KeyBalance => _keyBalance;

    /// <summary>
    /// Sets the per-channel balance b that blocks with balanced keys (<see cref="BlockFormats.BalancedKeys"/>) store their
    /// keys under: they hold Q(b⊙k), read back as Q(b⊙k)/b, and attention scores them with queries divided by b (so
    /// q·k is unchanged up to the quantization). Each b_c is rounded to the nearest power of two, so the scaling is
    /// exact in float arithmetic (re-encoding a balanced block decodes and re-balances without loss).
    /// </summary>
    /// <exception cref="InvalidOperationException">The head already holds balanced blocks (they were encoded under the old balance).</exception>
    /// <exception cref="ArgumentException">Not one positive finite factor per channel.</exception>
    public void SetKeyBalance(ReadOnlySpan<float> balance)
    {
        if (balance.Length != _headDim) throw new ArgumentException($"key balance has {balance.Length} factors for head dimension {_headDim}", nameof(balance));
        foreach (float b in balance)
            if (!(b > 0 && float.IsFinite(b))) throw new ArgumentException($"key balance factor {b} is not positive and finite", nameof(balance));
        if (_blocks.Exists(e => e.Formats.BalancedKeys))
            throw new InvalidOperationException("the head already holds balanced key blocks; their balance cannot change");
        _keyBalance = new float[_headDim];
        _keyUnbalance = new float[_headDim];
        for (int c = 0; c < _headDim; c++)
        {
            int e = Math.Clamp((int)Math.Round(Math.Log2(balance[c])), -60, 60);
            _keyBalance[c] = MathF.ScaleB(1f, e);
            _keyUnbalance[c] = MathF.ScaleB(1f, -e);
        }
    }

    /// <summary>Positions in storage order: every block's, then the tail's.</summary>
    public int[] StoragePositions()
    {
        var all = new int[_positions.Count];
        int i = 0;
        foreach (var e in _blocks) { e.Positions.CopyTo(all, i); i += e.Count; }
        _tailPositions.CopyTo(all, i);
        return all;
    }

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

    /// <summary>Adds one token at <paramref name="position"/> (after every stored one) to the tail.</summary>
    public void Append(int position, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        if (_positions.Count > 0 && position <= _positions[^1])
            throw new InvalidOperationException($"position {position} appended after {_positions[^1]}");
        int n = TailCount;
        EnsureTail(n + 1);
        key.CopyTo(_tailKeys.AsSpan(n * _headDim, _headDim));
        value.CopyTo(_tailValues.AsSpan(n * _headDim, _headDim));
        _tailPositions.Add(position);
        _positions.Add(position);
    }

    /// <summary>Once the tail holds <paramref name="threshold"/> tokens, encodes every full block's worth of it in the cache's formats.</summary>
    public void Flush(int threshold)
    {
        int b = BlockTokens, d = _headDim, n = TailCount;
        if (n < threshold || n < b) return;
        int full = n / b;
        for (int i = 0; i < full; i++)
            _blocks.Add(Encode(_pools.Default, _tailKeys.AsSpan(i * b * d, b * d), _tailValues.AsSpan(i * b * d, b * d),
                _tailPositions.GetRange(i * b, b).ToArray()));
        DropTailFront(full * b);
    }

    /// <summary>
    /// Drops every token at position ≥ <paramref name="length"/>. Blocks wholly past the cut go back to the pool;
    /// a block straddling it is decoded: if it is in the cache's own formats its kept rows join the float tail (so a
    /// head built by appends looks like one built from the shorter history; for quantized formats those rows carry
    /// one quantization step, which re-encoding may round again); otherwise its kept rows are re-encoded in its
    /// formats (re-quantized tokens keep their format), merged with the partial block of those formats.
    /// </summary>
    public void Truncate(int length)
    {
        int cut = _positions.Count;
        while (cut > 0 && _positions[cut - 1] >= length) cut--;
        if (cut == _positions.Count) return;
        int d = _headDim, tailCut = TailCount;
        while (tailCut > 0 && _tailPositions[tailCut - 1] >= length) tailCut--;
        _tailPositions.RemoveRange(tailCut, TailCount - tailCut);

        var pending = new PendingRows(this);
        var toTail = new List<(int Position, float[] Key, float[] Value)>();
        var rowK = new float[BlockTokens * d]; var rowV = new float[BlockTokens * d];
        var kept = new List<BlockEntry>(_blocks.Count);
        foreach (var e in _blocks)
        {
            if (e.LastPosition < length) { kept.Add(e); continue; }
            if (e.FirstPosition < length)
            {
                Decode(e, rowK, rowV);
                bool own = ReferenceEquals(e.Formats, _pools.Default);
                for (int t = 0; t < e.Count && e.Positions[t] < length; t++)
                {
                    if (own) toTail.Add((e.Positions[t], rowK.AsSpan(t * d, d).ToArray(), rowV.AsSpan(t * d, d).ToArray()));
                    else pending.Add(e.Formats, e.Positions[t], rowK.AsSpan(t * d, d), rowV.AsSpan(t * d, d));
                }
            }
            Release(e);
        }
        ReplaceBlocks(kept, pending, rowK, rowV);
        if (toTail.Count > 0) MergeIntoTail(toTail);
        _positions.RemoveRange(cut, _positions.Count - cut);
    }

    /// <summary>
    /// Removes the stored tokens whose <paramref name="evict"/> flag is set (one flag per stored token, in
    /// <see cref="Positions"/> order). Blocks without evicted tokens are kept as they are; the kept tokens of the
    /// affected blocks are decoded and regrouped by format pair into fresh dense blocks (with the partial blocks
    /// already in those formats), so each format ends in at most one partial block. Float formats re-encode their
    /// decoded values exactly; quantized formats re-quantize already-quantized values, which adds at most one more
    /// quantization step (the new group's range lies inside the union of the old ones').
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
    /// Re-encodes the stored tokens flagged in <paramref name="select"/> (one flag per stored token, in
    /// <see cref="Positions"/> order) in <paramref name="target"/>'s formats; the others keep theirs. Blocks with no
    /// flagged token, or already in the target formats, are kept as they are; the tokens of the other blocks are
    /// decoded and regrouped by format pair into fresh dense blocks (with the partial blocks already in those formats),
    /// wherever their positions lie. Flagged tail tokens leave the tail into the target's blocks; the others stay.
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
        copy._tailPositions.AddRange(_tailPositions);
        copy._tailKeys = (float[])_tailKeys.Clone();
        copy._tailValues = (float[])_tailValues.Clone();
        copy._keyBalance = _keyBalance;
        copy._keyUnbalance = _keyUnbalance;
        return copy;
    }

    /// <summary>Releases every block and forgets every token.</summary>
    public void Clear()
    {
        foreach (var e in _blocks) Release(e);
        _blocks.Clear();
        _positions.Clear();
        _tailPositions.Clear();
    }

    /// <summary>Decodes every stored token into [Positions.Count, headDim] keys and values, in <see cref="Positions"/> order.</summary>
    public void Read(Span<float> keys, Span<float> values)
    {
        int d = _headDim;
        var rowK = new float[BlockTokens * d]; var rowV = new float[BlockTokens * d];
        foreach (var e in _blocks)
        {
            Decode(e, rowK, rowV);
            for (int t = 0; t < e.Count; t++)
            {
                int i = LogicalIndex(e.Positions[t]);
                rowK.AsSpan(t * d, d).CopyTo(keys.Slice(i * d, d));
                rowV.AsSpan(t * d, d).CopyTo(values.Slice(i * d, d));
            }
        }
        for (int t = 0; t < TailCount; t++)
        {
            int i = LogicalIndex(_tailPositions[t]);
            TailKeys.Slice(t * d, d).CopyTo(keys.Slice(i * d, d));
            TailValues.Slice(t * d, d).CopyTo(values.Slice(i * d, d));
        }
    }

    /// <summary>Decodes block <paramref name="e"/>'s rows into [Count, headDim] arrays (balanced keys divided back by the balance).</summary>
    public void Decode(BlockEntry e, Span<float> keys, Span<float> values)
    {
        DecodeKeys(e, keys);
        BlockCodec.Decode(e.ValueLayout, e.ValueBytes, e.Count, values);
    }

    /// <summary>Decodes block <paramref name="e"/>'s keys into [Count, headDim] (balanced keys divided back by the balance).</summary>
    public void DecodeKeys(BlockEntry e, Span<float> keys)
    {
        BlockCodec.Decode(e.KeyLayout, e.KeyBytes, e.Count, keys);
        if (!e.Formats.BalancedKeys) return;
        for (int t = 0; t < e.Count; t++)
            TensorPrimitives.Multiply(keys.Slice(t * _headDim, _headDim), _keyUnbalance, keys.Slice(t * _headDim, _headDim));
    }

    /// <summary>
    /// Fills an empty store being loaded from a file: encoded block pairs (raw block bytes in their formats'
    /// layouts, each with its ascending positions) and the float tail with its ascending positions. The caller has
    /// checked that no position repeats.
    /// </summary>
    public void Restore(IReadOnlyList<(BlockFormats Formats, int[] Positions, byte[] Keys, byte[] Values)> blocks,
        IReadOnlyList<int> tailPositions, ReadOnlySpan<float> tailKeys, ReadOnlySpan<float> tailValues, float[]? keyBalance)
    {
        if (_positions.Count > 0) throw new InvalidOperationException("restoring into a non-empty head");
        if (keyBalance is not null) SetKeyBalance(keyBalance);
        foreach (var (formats, positions, keys, values) in blocks)
        {
            var k = formats.KeyPool.Allocate();
            var v = formats.ValuePool.Allocate();
            keys.CopyTo(formats.KeyPool.Span(k));
            values.CopyTo(formats.ValuePool.Span(v));
            _blocks.Add(new BlockEntry(k, v, positions, formats));
            _positions.AddRange(positions);
        }
        _tailPositions.AddRange(tailPositions);
        _positions.AddRange(tailPositions);
        _positions.Sort();
        EnsureTail(TailCount);
        tailKeys.CopyTo(_tailKeys);
        tailValues.CopyTo(_tailValues);
    }

    /// <summary>The index in <see cref="Positions"/> of a stored position.</summary>
    private int LogicalIndex(int position)
    {
        int i = _positions.BinarySearch(position);
        if (i < 0) throw new InvalidOperationException($"position {position} is not stored");
        return i;
    }

    private void CheckMask(ReadOnlySpan<bool> mask, string what)
    {
        if (mask.Length != _positions.Count)
            throw new ArgumentException($"{what} mask has {mask.Length} flags but the head stores {_positions.Count} tokens", nameof(mask));
    }

    /// <summary>
    /// Rebuilds the blocks and tail for a mask in logical order: with <paramref name="target"/> null the flagged tokens
    /// are dropped (eviction), otherwise they move to <paramref name="target"/> (re-quantization). Logical positions
    /// are the caller's.
    /// </summary>
    private void Rewrite(ReadOnlySpan<bool> flags, BlockFormats? target)
    {
        int d = _headDim;
        var kept = new List<BlockEntry>(_blocks.Count);
        var pending = new PendingRows(this);
        var rowK = new float[BlockTokens * d]; var rowV = new float[BlockTokens * d];
        Span<bool> flagged = stackalloc bool[BlockTokens];
        foreach (var e in _blocks)
        {
            bool any = false;
            for (int t = 0; t < e.Count; t++) any |= flagged[t] = flags[LogicalIndex(e.Positions[t])];
            if (!any || ReferenceEquals(target, e.Formats))
            {
                kept.Add(e);
                continue;
            }
            Decode(e, rowK, rowV);
            for (int t = 0; t < e.Count; t++)
            {
                var formats = !flagged[t] ? e.Formats : target;
                if (formats is not null) pending.Add(formats, e.Positions[t], rowK.AsSpan(t * d, d), rowV.AsSpan(t * d, d));
            }
            Release(e);
        }

        // Tail: evicted rows go, re-quantized rows leave for the target's blocks; the others stay in order.
        int w = 0, n = TailCount;
        for (int t = 0; t < n; t++)
        {
            int p = _tailPositions[t];
            if (flags[LogicalIndex(p)])
            {
                if (target is not null) pending.Add(target, p, _tailKeys.AsSpan(t * d, d), _tailValues.AsSpan(t * d, d));
                continue;
            }
            if (w != t)
            {
                _tailKeys.AsSpan(t * d, d).CopyTo(_tailKeys.AsSpan(w * d));
                _tailValues.AsSpan(t * d, d).CopyTo(_tailValues.AsSpan(w * d));
            }
            _tailPositions[w++] = p;
        }
        _tailPositions.RemoveRange(w, n - w);

        ReplaceBlocks(kept, pending, rowK, rowV);
    }

    /// <summary>
    /// Makes <paramref name="kept"/> then <paramref name="pending"/>'s rows the blocks. Kept partial blocks of a format
    /// pair being written join its rows first, so every format pair keeps at most one partial block (appends add full
    /// blocks only, and every rewrite ends here).
    /// </summary>
    private void ReplaceBlocks(List<BlockEntry> kept, PendingRows pending, float[] rowK, float[] rowV)
    {
        int d = _headDim;
        for (int i = kept.Count - 1; i >= 0; i--)
        {
            var e = kept[i];
            if (e.Count == BlockTokens || !pending.Has(e.Formats)) continue;
            Decode(e, rowK, rowV);
            for (int t = 0; t < e.Count; t++) pending.Add(e.Formats, e.Positions[t], rowK.AsSpan(t * d, d), rowV.AsSpan(t * d, d));
            Release(e);
            kept.RemoveAt(i);
        }
        _blocks.Clear();
        _blocks.AddRange(kept);
        pending.EncodeInto(_blocks);
    }

    /// <summary>Rows waiting to be encoded, grouped by format pair; each group is written as dense blocks in ascending position order.</summary>
    private sealed class PendingRows(HeadStore store)
    {
        private sealed class Group(BlockFormats formats)
        {
            public BlockFormats Formats { get; } = formats;
            public List<int> Positions { get; } = new();
            public List<float> Keys { get; } = new();
            public List<float> Values { get; } = new();
        }

        private readonly List<Group> _groups = new();

        public bool Has(BlockFormats formats) => _groups.Exists(g => ReferenceEquals(g.Formats, formats));

        public void Add(BlockFormats formats, int position, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
        {
            var g = _groups.Find(g => ReferenceEquals(g.Formats, formats));
            if (g is null) _groups.Add(g = new Group(formats));
            g.Positions.Add(position);
            g.Keys.AddRange(key);
            g.Values.AddRange(value);
        }

        /// <summary>Encodes every group (in the order groups first appeared) into blocks appended to <paramref name="into"/>.</summary>
        public void EncodeInto(List<BlockEntry> into)
        {
            int b = store.BlockTokens, d = store._headDim;
            var keys = new float[b * d]; var values = new float[b * d];
            foreach (var g in _groups)
            {
                int n = g.Positions.Count;
                var order = Enumerable.Range(0, n).ToArray();
                var sorted = g.Positions.ToArray();
                Array.Sort(sorted, order);
                var k = CollectionsMarshal.AsSpan(g.Keys);
                var v = CollectionsMarshal.AsSpan(g.Values);
                for (int s = 0; s < n; s += b)
                {
                    int c = Math.Min(b, n - s);
                    for (int t = 0; t < c; t++)
                    {
                        k.Slice(order[s + t] * d, d).CopyTo(keys.AsSpan(t * d));
                        v.Slice(order[s + t] * d, d).CopyTo(values.AsSpan(t * d));
                    }
                    into.Add(store.Encode(g.Formats, keys.AsSpan(0, c * d), values.AsSpan(0, c * d), sorted[s..(s + c)]));
                }
            }
            _groups.Clear();
        }
    }

    /// <summary>Puts decoded rows back into the tail, keeping its positions ascending.</summary>
    private void MergeIntoTail(List<(int Position, float[] Key, float[] Value)> rows)
    {
        int d = _headDim, n = TailCount;
        for (int t = 0; t < n; t++)
            rows.Add((_tailPositions[t], _tailKeys.AsSpan(t * d, d).ToArray(), _tailValues.AsSpan(t * d, d).ToArray()));
        rows.Sort((x, y) => x.Position.CompareTo(y.Position));
        EnsureTail(rows.Count);
        _tailPositions.Clear();
        for (int t = 0; t < rows.Count; t++)
        {
            rows[t].Key.CopyTo(_tailKeys, t * d);
            rows[t].Value.CopyTo(_tailValues, t * d);
            _tailPositions.Add(rows[t].Position);
        }
    }

    private BlockEntry Encode(BlockFormats formats, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int[] positions)
    {
        if (formats.BalancedKeys)
        {
            var balance = _keyBalance ?? throw new InvalidOperationException("balanced key blocks need the head's key balance (SetKeyBalance) first");
            var scaled = new float[positions.Length * _headDim];
            for (int t = 0; t < positions.Length; t++)
                TensorPrimitives.Multiply(keys.Slice(t * _headDim, _headDim), balance, scaled.AsSpan(t * _headDim, _headDim));
            keys = scaled;
        }
        var k = formats.KeyPool.Allocate();
        var v = formats.ValuePool.Allocate();
        BlockCodec.Encode(formats.KeyLayout, keys, positions.Length, formats.KeyPool.Span(k));
        BlockCodec.Encode(formats.ValueLayout, values, positions.Length, formats.ValuePool.Span(v));
        return new BlockEntry(k, v, positions, formats);
    }

    private static void Release(BlockEntry e)
    {
        e.Formats.KeyPool.Release(e.Key);
        e.Formats.ValuePool.Release(e.Value);
    }

    /// <summary>Removes the first <paramref name="n"/> tail rows (they were encoded into blocks).</summary>
    private void DropTailFront(int n)
    {
        int rest = TailCount - n, d = _headDim;
        _tailKeys.AsSpan(n * d, rest * d).CopyTo(_tailKeys);
        _tailValues.AsSpan(n * d, rest * d).CopyTo(_tailValues);
        _tailPositions.RemoveRange(0, n);
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
