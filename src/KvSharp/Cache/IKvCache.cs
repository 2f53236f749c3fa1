namespace KvSharp.Cache;

/// <summary>
/// The boundary between the transformer and KV storage. The transformer hands over each layer's
/// new keys (already rotated by RoPE) and values, and asks the cache to attend a block of queries
/// over what it holds. Attention lives behind this interface because only the cache knows how its
/// tokens are stored (full precision here; evicted, quantized or shared in compressed caches), so
/// it can read its own storage directly instead of materializing a float copy.
/// </summary>
public interface IKvCache : IDisposable
{
    /// <summary>Tokens appended so far (the next token's position).</summary>
    int Length { get; }

    /// <summary>
    /// Appends <paramref name="count"/> tokens to <paramref name="layer"/>: rows of
    /// [kvHeads * headDim] keys (after RoPE) and values, for positions Length .. Length+count-1.
    /// <see cref="Length"/> advances once the last layer has been appended.
    /// </summary>
    void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count);

    /// <summary>
    /// Causal attention of <paramref name="count"/> query rows ([heads * headDim] each, after RoPE) at
    /// positions <paramref name="firstPosition"/> .. +count-1 over this layer's tokens; writes
    /// [count, heads * headDim] to <paramref name="output"/>. Query head h reads KV head h / group.
    /// </summary>
    void Attend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, Span<float> output);

    /// <summary>Drops every token at position ≥ <paramref name="length"/> (rolls back a question and its answer).</summary>
    void Truncate(int length);

    /// <summary>Bytes of K and V storage in use.</summary>
    long ByteCount { get; }
}
