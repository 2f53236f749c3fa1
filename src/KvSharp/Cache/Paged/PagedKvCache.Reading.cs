using KvSharp.Cache.Blocks;

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
    public float[] ReadKeys(int layer, int kvHead) => Read(Store(layer, kvHead), keys: true);

    /// <summary>The values of (layer, KV head) decoded to float32, laid out as <see cref="ReadKeys"/>.</summary>
    public float[] ReadValues(int layer, int kvHead) => Read(Store(layer, kvHead), keys: false);

    private float[] Read(HeadStore store, bool keys)
    {
        int d = _headDim;
        var rows = new float[store.Positions.Count * d];
        var layout = keys ? _pools.KeyLayout : _pools.ValueLayout;
        var pool = keys ? _pools.KeyPool : _pools.ValuePool;
        int at = 0;
        foreach (var e in store.Blocks)
        {
            BlockCodec.Decode(layout, pool.Span(keys ? e.Key : e.Value), e.Count, rows.AsSpan(at * d, e.Count * d));
            at += e.Count;
        }
        (keys ? store.TailKeys : store.TailValues).CopyTo(rows.AsSpan(at * d));
        return rows;
    }
}
