using KvSharp.Cache;

namespace KvSharp.Compression.Calibration;

/// <summary>
/// A cache that forwards everything to an inner cache and shows a calibration what flows through it: each layer's
/// appended keys and values (after RoPE) and each attention call's queries and per-head outputs (before the output
/// projection). The forward pass appends a layer's new tokens before it attends them, so an attention callback sees
/// the values of its own query tokens in the last append of that layer.
/// </summary>
public sealed class ObservingKvCache(IKvCache inner) : IKvCache
{
    /// <summary>The cache that stores and attends.</summary>
    public IKvCache Inner { get; } = inner ?? throw new ArgumentNullException(nameof(inner));

    /// <summary>Called after each append with (layer, keys, values, count): rows of [kvHeads × headDim].</summary>
    public Action<int, ReadOnlySpan<float>, ReadOnlySpan<float>, int>? Appended { get; init; }

    /// <summary>Called after each attention with (layer, queries, count, first position, output): rows of [heads × headDim].</summary>
    public Action<int, ReadOnlySpan<float>, int, int, ReadOnlySpan<float>>? Attended { get; init; }

    /// <inheritdoc />
    public int Length => Inner.Length;

    /// <inheritdoc />
    public long ByteCount => Inner.ByteCount;

    /// <inheritdoc />
    public void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
    {
        Inner.Append(layer, keys, values, count);
        Appended?.Invoke(layer, keys, values, count);
    }

    /// <inheritdoc />
    public void Attend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, Span<float> output)
    {
        Inner.Attend(layer, queries, count, firstPosition, output);
        Attended?.Invoke(layer, queries, count, firstPosition, output);
    }

    /// <inheritdoc />
    public void Truncate(int length) => Inner.Truncate(length);

    /// <summary>Disposes nothing: the inner cache belongs to the caller.</summary>
    public void Dispose() { }
}
