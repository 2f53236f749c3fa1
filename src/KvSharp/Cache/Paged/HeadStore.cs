using KvSharp.Cache.Blocks;
using KvSharp.Cache.Pool;

namespace KvSharp.Cache.Paged;

/// <summary>One encoded block pair of a head: key block, value block and the tokens they hold (≤ BlockTokens).</summary>
internal readonly record struct BlockEntry(BlockId Key, BlockId Value, int Count);

/// <summary>
/// The tokens of one (layer, KV head): encoded blocks in position order, then a float32 tail (the KIVI residual
/// and any partial block's worth), plus the original position of every stored token. Encoded blocks are never
/// written after encoding: appends go to the tail, eviction and truncation build fresh blocks, so blocks shared
/// with forks (reference count &gt; 1) are copy-on-write by construction.
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

    public IReadOnlyList<BlockEntry> Blocks => _blocks;

    /// <summary>Original positions of the stored tokens, ascending (blocks first, then the tail).</summary>
    public IReadOnlyList<int> Positions => _positions;

    public int TailCount => _tailCount;
    public ReadOnlySpan<float> TailKeys => _tailKeys.AsSpan(0, _tailCount * _headDim);
    public ReadOnlySpan<float> TailValues => _tailValues.AsSpan(0, _tailCount * _headDim);

    /// <summary>Bytes held: encoded blocks at their layouts' exact size plus the float tail.</summary>
    public long KeyBlockBytes => (long)_blocks.Count * _pools.KeyLayout.ByteSize;
    public long ValueBlockBytes => (long)_blocks.Count * _pools.ValueLayout.ByteSize;
    public long TailBytes => 2L * _tailCount * _headDim * sizeof(float);

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

    /// <summary>Once the tail holds <paramref name="threshold"/> tokens, encodes every full block's worth of it.</summary>
    public void Flush(int threshold)
    {
        int b = _pools.KeyLayout.Tokens, d = _headDim;
        if (_tailCount < threshold || _tailCount < b) return;
        int full = _tailCount / b;
        for (int i = 0; i < full; i++)
            _blocks.Add(Encode(_tailKeys.AsSpan(i * b * d, b * d), _tailValues.AsSpan(i * b * d, b * d), b));
        int rest = _tailCount - full * b;
        _tailKeys.AsSpan(full * b * d, rest * d).CopyTo(_tailKeys);
        _tailValues.AsSpan(full * b * d, rest * d).CopyTo(_tailValues);
        _tailCount = rest;
    }

    /// <summary>
    /// Drops every token at position ≥ <paramref name="length"/>. The block holding the cut is decoded and its kept
    /// rows become the float tail, so the head looks like one built from the shorter history (for quantized formats
    /// those rows carry one quantization step, which re-encoding may round again).
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
            EnsureTail(_blocks[i].Count); // Decode writes the whole block's rows
            if (kept > 0) Decode(_blocks[i], _tailKeys, _tailValues);
            _tailCount = kept;
            for (int j = i; j < _blocks.Count; j++) Release(_blocks[j]);
            _blocks.RemoveRange(i, _blocks.Count - i);
        }
        _positions.RemoveRange(cut, _positions.Count - cut);
    }

    /// <summary>
    /// Removes the stored tokens whose <paramref name="evict"/> flag is set (one flag per stored token, in order).
    /// Blocks without evicted tokens are kept as they are; the kept tokens of each run of affected blocks are
    /// decoded and re-encoded into fresh blocks (the run's last block may be partial). Float formats re-encode their
    /// decoded values exactly; quantized formats re-quantize already-quantized values, which adds at most one more
    /// quantization step (the new group's range lies inside the old one's).
    /// </summary>
    public void Evict(ReadOnlySpan<bool> evict)
    {
        if (evict.Length != _positions.Count)
            throw new ArgumentException($"eviction mask has {evict.Length} flags but the head stores {_positions.Count} tokens", nameof(evict));
        int b = _pools.KeyLayout.Tokens, d = _headDim;
        var kept = new List<BlockEntry>(_blocks.Count);
        var pendingK = new List<float>(); var pendingV = new List<float>();
        var rowK = new float[b * d]; var rowV = new float[b * d];
        int start = 0;
        foreach (var e in _blocks)
        {
            bool touched = evict.Slice(start, e.Count).Contains(true);
            if (!touched)
            {
                EncodePending(kept, pendingK, pendingV);
                kept.Add(e);
            }
            else
            {
                Decode(e, rowK, rowV);
                for (int t = 0; t < e.Count; t++)
                {
                    if (evict[start + t]) continue;
                    pendingK.AddRange(rowK.AsSpan(t * d, d));
                    pendingV.AddRange(rowV.AsSpan(t * d, d));
                }
                Release(e);
            }
            start += e.Count;
        }
        EncodePending(kept, pendingK, pendingV);
        _blocks.Clear();
        _blocks.AddRange(kept);

        int tailKept = 0;
        for (int t = 0; t < _tailCount; t++)
        {
            if (evict[start + t]) continue;
            if (tailKept != t)
            {
                _tailKeys.AsSpan(t * d, d).CopyTo(_tailKeys.AsSpan(tailKept * d));
                _tailValues.AsSpan(t * d, d).CopyTo(_tailValues.AsSpan(tailKept * d));
            }
            tailKept++;
        }
        _tailCount = tailKept;

        int w = 0;
        for (int i = 0; i < _positions.Count; i++) if (!evict[i]) _positions[w++] = _positions[i];
        _positions.RemoveRange(w, _positions.Count - w);
    }

    /// <summary>A copy sharing every encoded block (each retained once more).</summary>
    public HeadStore Fork()
    {
        var copy = new HeadStore(_pools, _headDim);
        foreach (var e in _blocks)
        {
            _pools.KeyPool.Retain(e.Key);
            _pools.ValuePool.Retain(e.Value);
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

    /// <summary>Decodes block <paramref name="e"/>'s rows into [Count, headDim] arrays (for re-encoding).</summary>
    public void Decode(BlockEntry e, Span<float> keys, Span<float> values)
    {
        BlockCodec.Decode(_pools.KeyLayout, _pools.KeyPool.Span(e.Key), e.Count, keys);
        BlockCodec.Decode(_pools.ValueLayout, _pools.ValuePool.Span(e.Value), e.Count, values);
    }

    private void EncodePending(List<BlockEntry> into, List<float> keys, List<float> values)
    {
        int b = _pools.KeyLayout.Tokens, d = _headDim, n = keys.Count / d;
        if (n == 0) return;
        var k = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(keys);
        var v = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(values);
        for (int s = 0; s < n; s += b)
        {
            int c = Math.Min(b, n - s);
            into.Add(Encode(k.Slice(s * d, c * d), v.Slice(s * d, c * d), c));
        }
        keys.Clear(); values.Clear();
    }

    private BlockEntry Encode(ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
    {
        var k = _pools.KeyPool.Allocate();
        var v = _pools.ValuePool.Allocate();
        BlockCodec.Encode(_pools.KeyLayout, keys, count, _pools.KeyPool.Span(k));
        BlockCodec.Encode(_pools.ValueLayout, values, count, _pools.ValuePool.Span(v));
        return new BlockEntry(k, v, count);
    }

    private void Release(BlockEntry e)
    {
        _pools.KeyPool.Release(e.Key);
        _pools.ValuePool.Release(e.Value);
    }

    private void EnsureTail(int tokens)
    {
        int need = tokens * _headDim;
        if (_tailKeys.Length >= need) return;
        int cap = Math.Max(need, Math.Max(_tailKeys.Length * 2, _pools.KeyLayout.Tokens * _headDim));
        Array.Resize(ref _tailKeys, cap);
        Array.Resize(ref _tailValues, cap);
    }
}
