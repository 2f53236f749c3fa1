using KvSharp.Cache;
using KvSharp.Cache.Paged;

namespace KvSharp.Compression.Recall;

/// <summary>
/// ClusterKV (recall, not eviction): a cache that keeps every token and, at each decode step, attends only over the
/// tokens of the clusters whose centroids best match the current query. Wraps a <see cref="PagedKvCache"/>, which
/// stores everything and serves every multi-token pass (prefill, questions) with full attention; this wrapper keeps a
/// float32 copy of every key and value (the paper's "full KV in slower memory"), clusters the keys per (layer, KV
/// head) with cosine k-means when attached, and serves one-token (decode) passes itself: per KV head, the sinks, the
/// tokens appended since the last clustering, and whole clusters ranked by Σ_{h∈group} q_h·centroid up to the
/// budget. Tokens appended later are attended in full until <see cref="ClusterKvOptions.Every"/> accumulate, then
/// clustered as a batch with the attached tokens' average cluster size.
/// </summary>
public sealed class ClusterKvCache : IKvCache
{
    private readonly PagedKvCache _inner;
    private readonly bool _ownsInner;
    private readonly int _layers, _heads, _kvHeads, _d;
    private readonly ClusterKvHead[] _stores; // [layer * kvHeads + head]
    private readonly int[] _layerLength; // next position per layer (layers append in turn within a pass)

    private ClusterKvCache(PagedKvCache inner, int heads, ClusterKvOptions options, bool ownsInner)
    {
        _inner = inner; _ownsInner = ownsInner; Options = options;
        _layers = inner.Layers; _kvHeads = inner.KvHeads; _d = inner.HeadDim; _heads = heads;
        _stores = new ClusterKvHead[_layers * _kvHeads];
        _layerLength = Enumerable.Repeat(inner.Length, _layers).ToArray();
        long clustered = 0;
        for (int l = 0; l < _layers; l++)
            for (int g = 0; g < _kvHeads; g++)
            {
                var store = _stores[l * _kvHeads + g] = new ClusterKvHead(_d);
                var (keys, values) = inner.Read(l, g);
                var positions = inner.Positions(l, g);
                for (int i = 0; i < positions.Count; i++) store.Append(keys.AsSpan(i * _d, _d), values.AsSpan(i * _d, _d), positions[i]);
            }
        Compute.Cpu.CpuThreads.For(_stores.Length, 1, (from, to) =>
        {
            for (int i = from; i < to; i++) _stores[i].ClusterPending(options.Sinks, options.Clusters, options.Iterations);
        });
        foreach (var s in _stores) clustered = Math.Max(clustered, s.Clusters.Sum(c => c.Rows.Count));
        AttachedTokens = (int)clustered;
        Budget = options.Keep is { } keep ? Math.Max(1, (int)Math.Round(keep * clustered, MidpointRounding.AwayFromZero)) : options.Tokens;
        _tokensPerCluster = clustered > 0 ? Math.Max(1.0, (double)clustered / Math.Min(options.Clusters, clustered)) : Math.Max(1.0, options.Every / 8.0);
    }

    private readonly double _tokensPerCluster;

    /// <summary>
    /// Wraps <paramref name="inner"/> (which may already hold a prefilled context: its tokens are clustered now).
    /// <paramref name="heads"/> is the model's query-head count. With <paramref name="ownsInner"/> disposing the wrapper
    /// disposes <paramref name="inner"/>.
    /// </summary>
    /// <exception cref="KvSharpException">The head counts do not fit the cache, or the cache shares layers (KVSharer).</exception>
    public static ClusterKvCache Attach(PagedKvCache inner, int heads, ClusterKvOptions options, bool ownsInner = false)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(options);
        if (heads < inner.KvHeads || heads % inner.KvHeads != 0)
            throw new KvSharpException($"clusterkv: {heads} query heads must be a positive multiple of the cache's {inner.KvHeads} KV heads");
        for (int l = 0; l < inner.Layers; l++)
            if (inner.SharedLayerSource(l) >= 0)
                throw new KvSharpException($"clusterkv: layer {l} shares layer {inner.SharedLayerSource(l)}'s KV (KVSharer); ClusterKV needs every layer's own keys");
        return new ClusterKvCache(inner, heads, options, ownsInner);
    }

    /// <summary>The settings.</summary>
    public ClusterKvOptions Options { get; }

    /// <summary>Tokens per (layer, KV head) of the selected clusters at each decode step.</summary>
    public int Budget { get; }

    /// <summary>The most tokens any head clustered when attached (the base of <see cref="ClusterKvOptions.Keep"/>).</summary>
    public int AttachedTokens { get; }

    /// <summary>The wrapped cache (it holds every token).</summary>
    public PagedKvCache Inner => _inner;

    /// <inheritdoc />
    public int Length => _inner.Length;

    /// <inheritdoc />
    /// <remarks>The wrapped cache's bytes; the float copy the selection reads is the "slower memory" and not counted.</remarks>
    public long ByteCount => _inner.ByteCount;

    /// <summary>
    /// Bytes of the float32 copy of every stored key and value the selection reads (the paper's "slower memory"):
    /// besides <see cref="ByteCount"/>, not instead of it.
    /// </summary>
    public long CopyBytes => _stores.Sum(s => (long)s.Count) * _d * 2 * sizeof(float);

    /// <summary>Decode steps served (per layer: counted once per step).</summary>
    public long DecodeSteps { get; private set; }

    /// <summary>Tokens attended over all decode steps, layers and KV heads (divide by steps × layers × KV heads for the mean).</summary>
    public long SelectedTokens { get; private set; }

    /// <summary>
    /// Whether each decode step also measures attention recall: per query head, the share of the full attention's
    /// softmax mass (over every stored token) that falls on the selected tokens. Costs one full attention score pass.
    /// </summary>
    public bool MeasureRecall { get; set; }

    /// <summary>Sum of the measured recalls (one per decode step, layer and query head).</summary>
    public double RecallSum { get; private set; }

    /// <summary>Recalls measured (decode steps × layers × query heads).</summary>
    public long RecallSamples { get; private set; }

    /// <summary>Mean measured recall (NaN when none was measured).</summary>
    public double MeanRecall => RecallSamples == 0 ? double.NaN : RecallSum / RecallSamples;

    /// <inheritdoc />
    public void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
    {
        int start = _layerLength[layer];
        _inner.Append(layer, keys, values, count);
        _layerLength[layer] = start + count;
        int row = _kvHeads * _d;
        for (int g = 0; g < _kvHeads; g++)
            for (int t = 0; t < count; t++)
                _stores[layer * _kvHeads + g].Append(keys.Slice(t * row + g * _d, _d), values.Slice(t * row + g * _d, _d), start + t);
    }

    /// <inheritdoc />
    public void Attend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, Span<float> output)
    {
        if (count != 1)
        {
            _inner.Attend(layer, queries, count, firstPosition, output);
            return;
        }
        int group = _heads / _kvHeads;
        var q = queries.Slice(0, _heads * _d).ToArray();
        var o = new float[_heads * _d];
        var selected = new int[_kvHeads];
        var recall = new double[_heads];
        bool measure = MeasureRecall;
        Compute.Cpu.CpuThreads.For(_kvHeads, 1, (from, to) =>
        {
            for (int g = from; g < to; g++)
            {
                var store = _stores[layer * _kvHeads + g];
                if (store.Unclustered >= Options.Every + SinksPending(store))
                    store.ClusterPending(Options.Sinks, Math.Max(1, (int)Math.Round(store.Unclustered / _tokensPerCluster)), Options.Iterations);
                var rows = store.Select(q.AsSpan(g * group * _d, group * _d), Budget, Options.Sinks);
                selected[g] = rows.Length;
                for (int h = g * group; h < (g + 1) * group; h++)
                {
                    store.Attend(q.AsSpan(h * _d, _d), rows, o.AsSpan(h * _d, _d));
                    if (measure) recall[h] = store.Recall(q.AsSpan(h * _d, _d), rows);
                }
            }
        });
        o.CopyTo(output);
        if (layer == 0) DecodeSteps++;
        SelectedTokens += selected.Sum();
        if (measure)
        {
            RecallSum += recall.Sum();
            RecallSamples += _heads;
        }
    }

    /// <summary>Sinks among the unclustered rows (a cache attached empty has its sinks there until the first clustering).</summary>
    private int SinksPending(ClusterKvHead store)
    {
        int n = 0;
        for (int r = store.Count - store.Unclustered; r < store.Count && store.Positions[r] < Options.Sinks; r++) n++;
        return n;
    }

    /// <summary>The rows (layer, KV head) would attend for the group's queries [group, headDim] now (for tests and reports).</summary>
    public IReadOnlyList<int> SelectPositions(int layer, int kvHead, ReadOnlySpan<float> groupQueries)
    {
        var store = _stores[layer * _kvHeads + kvHead];
        return store.Select(groupQueries, Budget, Options.Sinks).Select(r => store.Positions[r]).ToArray();
    }

    /// <summary>The clusters of (layer, KV head): unit centroid and member positions (for tests and reports).</summary>
    public IReadOnlyList<(float[] Centroid, int[] Positions)> Clusters(int layer, int kvHead)
    {
        var store = _stores[layer * _kvHeads + kvHead];
        return store.Clusters.Select(c => (c.Centroid, c.Rows.Select(r => store.Positions[r]).ToArray())).ToArray();
    }

    /// <inheritdoc />
    public void Truncate(int length)
    {
        _inner.Truncate(length);
        foreach (var s in _stores) s.Truncate(length);
        for (int l = 0; l < _layers; l++) _layerLength[l] = Math.Min(_layerLength[l], length);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var s in _stores) s.Clear(); // the float copy goes now; the counters stay readable
        if (_ownsInner) _inner.Dispose();
    }
}
