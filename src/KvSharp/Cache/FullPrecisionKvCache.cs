namespace KvSharp.Cache;

/// <summary>
/// A plain float32 KV cache: per (layer, KV head), keys and values as contiguous [tokens, headDim]
/// arrays grown by doubling. It is the reference the compressed cache is checked against.
/// </summary>
public sealed class FullPrecisionKvCache : IKvCache
{
    private readonly int _kvHeads, _heads, _headDim;
    private readonly HeadRows<float> _rows;
    private readonly float _scale;

    [ThreadStatic] private static float[]? t_scores;
    [ThreadStatic] private static float[]? t_acc;

    /// <summary>Creates an empty cache for a model of the given shape holding at most <paramref name="maxTokens"/>.</summary>
    public FullPrecisionKvCache(int layers, int heads, int kvHeads, int headDim, int maxTokens)
    {
        if (heads % kvHeads != 0) throw new ArgumentException($"{heads} heads not a multiple of {kvHeads} KV heads");
        _heads = heads; _kvHeads = kvHeads; _headDim = headDim;
        _rows = new HeadRows<float>(layers, kvHeads, headDim, maxTokens);
        _scale = 1f / MathF.Sqrt(headDim);
    }

    /// <summary>Creates a cache shaped for <paramref name="config"/>.</summary>
    public FullPrecisionKvCache(Models.ModelConfig config, int maxTokens)
        : this(config.NumLayers, config.NumHeads, config.NumKvHeads, config.HeadDim, maxTokens) { }

    /// <inheritdoc />
    public int Length => _rows.Length;

    /// <summary>Most tokens this cache accepts.</summary>
    public int MaxTokens => _rows.MaxTokens;

    /// <inheritdoc />
    public long ByteCount => _rows.ByteCount;

    /// <inheritdoc />
    public void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
    {
        int start = _rows.BeginAppend(layer, count);
        int row = _kvHeads * _headDim;
        for (int g = 0; g < _kvHeads; g++)
        {
            int slot = layer * _kvHeads + g;
            for (int t = 0; t < count; t++)
            {
                keys.Slice(t * row + g * _headDim, _headDim).CopyTo(_rows.Keys[slot].AsSpan((start + t) * _headDim));
                values.Slice(t * row + g * _headDim, _headDim).CopyTo(_rows.Values[slot].AsSpan((start + t) * _headDim));
            }
        }
        _rows.EndAppend(layer, start + count);
    }

    /// <inheritdoc />
    public void Attend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, Span<float> output)
    {
        int length = _rows.LayerLength[layer];
        if (firstPosition + count > length)
            throw new InvalidOperationException($"queries up to position {firstPosition + count - 1} but layer {layer} holds {length} tokens");
        int group = _heads / _kvHeads, hd = _headDim, qRow = _heads * hd;
        var q = queries.Slice(0, count * qRow).ToArray();
        var o = new float[count * qRow];
        // One job per (query token, KV head): the group's query heads are contiguous in q, so they
        // form one [group, headDim] block attended together.
        // Small attentions (short contexts, tiny heads) run on the calling thread: a dispatch costs more than it saves.
        long work = (long)count * _heads * hd * (firstPosition + count);
        Compute.Cpu.CpuThreads.For(count * _kvHeads, work < (1 << 18) ? int.MaxValue : 1, (start, end) =>
        {
            // Per-thread scratch: scores, and the group's output accumulated locally and copied once, because
            // neighbouring jobs' outputs share cache lines and per-key stores into them would ping-pong
            // between cores.
            int need = group * (firstPosition + count);
            var scores = t_scores is { } sc && sc.Length >= need ? sc : (t_scores = new float[Math.Max(need, 1024)]);
            var acc = t_acc is { } ac && ac.Length >= group * hd ? ac : (t_acc = new float[group * hd]);
            for (int job = start; job < end; job++)
            {
                int t = job / _kvHeads, g = job % _kvHeads;
                int slot = layer * _kvHeads + g;
                int visible = firstPosition + t + 1; // causal: keys at positions 0..pos
                var local = acc.AsSpan(0, group * hd);
                FullPrecisionAttention.Attend(
                    new ReadOnlySpan<float>(q, t * qRow + g * group * hd, group * hd), group,
                    _rows.Keys[slot], _rows.Values[slot], visible, hd, _scale, scores, local);
                local.CopyTo(new Span<float>(o, t * qRow + g * group * hd, group * hd));
            }
        });
        o.CopyTo(output);
    }

    /// <inheritdoc />
    public void Truncate(int length) => _rows.Truncate(length);

    /// <inheritdoc />
    public void Dispose() { }
}
