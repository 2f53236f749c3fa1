using System.Numerics.Tensors;
using KvSharp.Compute.Cpu;

namespace KvSharp.Cache;

/// <summary>
/// llama.cpp's default CPU KV cache: keys (after RoPE) and values stored as f16, attended with ggml's one-chunk flash
/// attention and its f16 value accumulator (<see cref="GgmlFlashAttention"/>). The cache of
/// <see cref="CpuNumerics.LlamaCpp"/>; with ggml-order projections it gives llama.cpp's logits bit for bit.
/// </summary>
public sealed class GgmlF16KvCache : IKvCache
{
    private readonly int _kvHeads, _heads, _headDim;
    private readonly HeadRows<Half> _rows;
    private readonly float _scale;

    // Per-thread widened copies of one KV head's keys and values.
    [ThreadStatic] private static float[]? t_keys;
    [ThreadStatic] private static float[]? t_values;

    /// <summary>An empty cache shaped for <paramref name="config"/>, holding at most <paramref name="maxTokens"/>.</summary>
    public GgmlF16KvCache(Models.ModelConfig config, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(config);
        _heads = config.NumHeads; _kvHeads = config.NumKvHeads; _headDim = config.HeadDim;
        if (_heads % _kvHeads != 0) throw new ArgumentException($"{_heads} heads not a multiple of {_kvHeads} KV heads", nameof(config));
        _rows = new HeadRows<Half>(config.NumLayers, _kvHeads, _headDim, maxTokens);
        _scale = 1.0f / MathF.Sqrt(_headDim);
    }

    /// <inheritdoc />
    public int Length => _rows.Length;

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
            // Rounded to nearest even, as ggml's SET_ROWS into an F16 tensor.
            for (int t = 0; t < count; t++)
            {
                TensorPrimitives.ConvertToHalf(keys.Slice(t * row + g * _headDim, _headDim), _rows.Keys[slot].AsSpan((start + t) * _headDim, _headDim));
                TensorPrimitives.ConvertToHalf(values.Slice(t * row + g * _headDim, _headDim), _rows.Values[slot].AsSpan((start + t) * _headDim, _headDim));
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
        int group = _heads / _kvHeads, hd = _headDim, qRow = _heads * hd, visible = firstPosition + count;
        var q = queries[..(count * qRow)].ToArray();
        var o = new float[count * qRow];
        // One job per (query row, KV head): the f16 keys and values it reads are widened once (exactly) for the group's
        // query heads; each head is computed alone, so the split does not change any rounding.
        long work = (long)count * _heads * hd * visible;
        CpuThreads.For(count * _kvHeads, work < (1 << 18) ? int.MaxValue : 1, (start, end) =>
        {
            Span<float> scratch = stackalloc float[2 * hd];
            float[] keys = t_keys is { } tk && tk.Length >= visible * hd ? tk : (t_keys = new float[Math.Max(visible * hd, 4096)]);
            float[] values = t_values is { } tv && tv.Length >= visible * hd ? tv : (t_values = new float[Math.Max(visible * hd, 4096)]);
            int widened = -1;
            for (int job = start; job < end; job++)
            {
                // KV-head-major, so a thread's consecutive jobs mostly read the same head: widen when it changes.
                int g = job / count, t = job % count, slot = layer * _kvHeads + g;
                if (widened != slot)
                {
                    TensorPrimitives.ConvertToSingle(_rows.Keys[slot].AsSpan(0, visible * hd), keys.AsSpan(0, visible * hd));
                    TensorPrimitives.ConvertToSingle(_rows.Values[slot].AsSpan(0, visible * hd), values.AsSpan(0, visible * hd));
                    widened = slot;
                }
                for (int h = g * group; h < (g + 1) * group; h++)
                    GgmlFlashAttention.OneChunk(q.AsSpan(t * qRow + h * hd, hd), keys, values, firstPosition + t + 1,
                        _scale, scratch, o.AsSpan(t * qRow + h * hd, hd));
            }
        });
        o.CopyTo(output);
    }

    /// <inheritdoc />
    public void Truncate(int length) => _rows.Truncate(length);

    /// <inheritdoc />
    public void Dispose() { }
}
