namespace KvSharp.Cache;

/// <summary>
/// The storage of the contiguous (non-paged) caches: per (layer, KV head) slot, keys and values as [tokens, headDim]
/// arrays of <typeparamref name="T"/> grown by doubling, and each layer's length. The caches differ only in the element
/// type, how a row is stored and how they attend.
/// </summary>
internal sealed class HeadRows<T> where T : unmanaged
{
    private readonly int _layers, _kvHeads, _headDim, _maxTokens;

    /// <summary>Keys per slot (layer * kvHeads + head): [capacity * headDim].</summary>
    public readonly T[][] Keys;

    /// <summary>Values per slot, shaped as <see cref="Keys"/>.</summary>
    public readonly T[][] Values;

    /// <summary>Tokens stored per layer.</summary>
    public readonly int[] LayerLength;

    public HeadRows(int layers, int kvHeads, int headDim, int maxTokens)
    {
        _layers = layers; _kvHeads = kvHeads; _headDim = headDim; _maxTokens = maxTokens;
        Keys = new T[layers * kvHeads][];
        Values = new T[layers * kvHeads][];
        for (int i = 0; i < Keys.Length; i++) { Keys[i] = []; Values[i] = []; }
        LayerLength = new int[layers];
    }

    /// <summary>Tokens in the last layer (the cache's length).</summary>
    public int Length => LayerLength[_layers - 1];

    /// <summary>Most tokens the cache accepts.</summary>
    public int MaxTokens => _maxTokens;

    /// <summary>Bytes of the stored keys and values.</summary>
    public unsafe long ByteCount
    {
        get
        {
            long n = 0;
            for (int l = 0; l < _layers; l++) n += 2L * LayerLength[l] * _kvHeads * _headDim * sizeof(T);
            return n;
        }
    }

    /// <summary>
    /// Makes room for <paramref name="count"/> more tokens in every slot of <paramref name="layer"/> and returns the first
    /// new token's index; <see cref="EndAppend"/> publishes them once their rows are written.
    /// </summary>
    public int BeginAppend(int layer, int count)
    {
        int start = LayerLength[layer];
        if (start + count > _maxTokens)
            throw new KvSharpException($"the context holds at most {_maxTokens} tokens; appending {count} to {start} would exceed it");
        for (int g = 0; g < _kvHeads; g++) EnsureCapacity(layer * _kvHeads + g, start + count);
        return start;
    }

    /// <summary>Sets <paramref name="layer"/>'s length to <paramref name="length"/> after its rows were written.</summary>
    public void EndAppend(int layer, int length) => LayerLength[layer] = length;

    /// <summary>Rolls every layer back to at most <paramref name="length"/> tokens.</summary>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), $"cannot roll back to {length}: the cache holds {Length} tokens");
        for (int l = 0; l < _layers; l++) LayerLength[l] = Math.Min(LayerLength[l], length);
    }

    private void EnsureCapacity(int slot, int tokens)
    {
        int need = tokens * _headDim;
        if (Keys[slot].Length >= need) return;
        int cap = Math.Max(need, Math.Min(_maxTokens * _headDim, Math.Max(64 * _headDim, Keys[slot].Length * 2)));
        Array.Resize(ref Keys[slot], cap);
        Array.Resize(ref Values[slot], cap);
    }
}
