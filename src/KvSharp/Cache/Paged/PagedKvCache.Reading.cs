namespace KvSharp.Cache.Paged;

/// <summary>Decoded copies of a head's keys or values, for compression scorers (key norms, redundancy, clustering).</summary>
public sealed partial class PagedKvCache
{
    /// <summary>Head dimension.</summary>
    public int HeadDim => _headDim;

    /// <summary>
    /// The keys (after RoPE) of (layer, KV head) decoded to float32, [stored tokens, head dimension] row-major in
    /// <see cref="Positions"/> order: what attention reads (quantized formats give their dequantized values).
    /// A copy for scorers and tools, never for attention, which reads the blocks in place.
    /// </summary>
    public float[] ReadKeys(int layer, int kvHead) => Read(layer, kvHead).Keys;

    /// <summary>The values of (layer, KV head) decoded to float32, laid out as <see cref="ReadKeys"/>.</summary>
    public float[] ReadValues(int layer, int kvHead) => Read(layer, kvHead).Values;
}
