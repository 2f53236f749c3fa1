namespace KvSharp.Cache.Paged;

/// <summary>Cross-layer KV sharing (KVSharer) of <see cref="PagedKvCache"/>.</summary>
public sealed partial class PagedKvCache
{
    /// <summary>
    /// Makes <paramref name="layer"/> read <paramref name="sourceLayer"/>'s keys and values instead of storing its own
    /// (KVSharer: shared layers store no KV). The layer's blocks go back to the pool at once; from then on appending
    /// to it only advances its length (its keys and values are discarded) and its attention reads the source's
    /// heads, which a forward pass appends first, so causality holds. A source that itself shares resolves to its
    /// own source, and layers that read <paramref name="layer"/> move to that root too. Evicting or re-quantizing a
    /// source head changes every layer reading it; evicting a shared layer's head is refused.
    /// </summary>
    /// <exception cref="KvSharpException">The source is not an earlier layer, or holds fewer tokens than the layer.</exception>
    public void ShareLayer(int layer, int sourceLayer)
    {
        CheckLayer(layer);
        if (sourceLayer < 0 || sourceLayer >= layer)
            throw new KvSharpException($"layer {layer} cannot share layer {sourceLayer}'s KV cache: the source must be an earlier layer (0..{layer - 1}), which a forward pass appends first");
        ThrowIfCollectingStatistics("share a layer's KV");
        int root = StoreLayer(sourceLayer);
        if (_layerLength[root] < _layerLength[layer])
            throw new KvSharpException($"layer {layer} cannot share layer {root}'s KV cache: it holds {_layerLength[layer]} tokens and the source only {_layerLength[root]}");
        for (int g = 0; g < _kvHeads; g++) _stores[layer * _kvHeads + g].Clear();
        for (int l = layer + 1; l < _layers; l++) if (_shareSource[l] == layer) _shareSource[l] = root;
        _shareSource[layer] = root;
    }

    /// <summary>The layer whose storage <paramref name="layer"/> reads (<see cref="ShareLayer"/>), or -1 when it stores its own.</summary>
    public int SharedLayerSource(int layer)
    {
        CheckLayer(layer);
        return _shareSource[layer];
    }
}
