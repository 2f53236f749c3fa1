using KvSharp.Cache.Blocks;

namespace KvSharp.Cache.Paged;

/// <summary>
/// The paged compressed KV cache: per (layer, KV head) a list of fixed-size token blocks (keys and values in
/// separate blocks, each in its own <see cref="KvFormat"/>) taken from block pools shared by all heads, plus a
/// float32 tail for the newest tokens. Keys are stored after RoPE and every token keeps its original position,
/// so eviction never re-rotates and causal masking compares positions. Heads may hold different tokens.
/// </summary>
/// <remarks>
/// Not thread-safe for mutation (Append/Evict/Truncate/Fork/Dispose); <see cref="Attend"/> parallelizes internally.
/// A cache and its forks share pools and must be used from one thread at a time.
/// </remarks>
public sealed partial class PagedKvCache : IKvCache
{
    private readonly int _layers, _heads, _kvHeads, _headDim;
    private readonly PagedKvCacheOptions _options;
    private readonly PoolSet _pools;
    private readonly HeadStore[] _stores; // [layer * kvHeads + head]
    private readonly int[] _layerLength;
    private readonly int[] _shareSource; // per layer: the layer whose stores it reads (KVSharer), -1 = its own
    private bool _disposed;

    /// <summary>Creates an empty cache for a model of the given shape.</summary>
    /// <exception cref="KvSharpException">The shape or an option is invalid (the message names it).</exception>
    public PagedKvCache(int layers, int heads, int kvHeads, int headDim, PagedKvCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (layers < 1 || kvHeads < 1 || heads < 1 || heads % kvHeads != 0)
            throw new KvSharpException($"paged KV cache: {heads} heads must be a positive multiple of {kvHeads} KV heads, over {layers} ≥ 1 layers");
        _ = options.Layouts(headDim); // validates the options before anything is allocated
        _layers = layers; _heads = heads; _kvHeads = kvHeads; _headDim = headDim; _options = options;
        _pools = new PoolSet(options, headDim);
        _stores = new HeadStore[layers * kvHeads];
        for (int i = 0; i < _stores.Length; i++) _stores[i] = new HeadStore(_pools, headDim);
        _layerLength = new int[layers];
        _shareSource = Enumerable.Repeat(-1, layers).ToArray();
    }

    /// <summary>Creates a cache shaped for <paramref name="config"/>.</summary>
    public PagedKvCache(Models.ModelConfig config, PagedKvCacheOptions options)
        : this(config.NumLayers, config.NumHeads, config.NumKvHeads, config.HeadDim, options) { }

    private PagedKvCache(PagedKvCache parent)
    {
        _layers = parent._layers; _heads = parent._heads; _kvHeads = parent._kvHeads; _headDim = parent._headDim;
        _options = parent._options;
        _pools = parent._pools;
        _pools.AddOwner();
        _stores = parent._stores.Select(s => s.Fork()).ToArray();
        _layerLength = (int[])parent._layerLength.Clone();
        _shareSource = (int[])parent._shareSource.Clone();
    }

    /// <summary>The options this cache was created with.</summary>
    public PagedKvCacheOptions Options => _options;

    /// <summary>Layout of key blocks encoded from appended tokens (<see cref="Requantize"/> may store others).</summary>
    public BlockLayout KeyLayout => _pools.Default.KeyLayout;

    /// <summary>Layout of value blocks encoded from appended tokens (<see cref="Requantize"/> may store others).</summary>
    public BlockLayout ValueLayout => _pools.Default.ValueLayout;

    /// <summary>Layers.</summary>
    public int Layers => _layers;

    /// <summary>KV heads per layer.</summary>
    public int KvHeads => _kvHeads;

    /// <inheritdoc />
    /// <remarks>The logical sequence length (the next position); eviction does not change it.</remarks>
    public int Length => _layerLength[_layers - 1];

    /// <inheritdoc />
    public void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
    {
        CheckLayer(layer);
        int start = _layerLength[layer], row = _kvHeads * _headDim;
        if (start + count > _options.MaxTokens)
            throw new KvSharpException($"the context holds at most {_options.MaxTokens} tokens (PagedKvCacheOptions.MaxTokens); appending {count} to {start} would exceed it");
        if (keys.Length < count * row || values.Length < count * row)
            throw new ArgumentException($"{count} tokens need {count * row} key and value floats, got {keys.Length} and {values.Length}");
        // A shared layer stores nothing of its own: it reads its source layer, appended earlier in the same pass.
        for (int g = 0; g < _kvHeads && _shareSource[layer] < 0; g++)
        {
            var store = _stores[layer * _kvHeads + g];
            for (int t = 0; t < count; t++)
                store.Append(start + t, keys.Slice(t * row + g * _headDim, _headDim), values.Slice(t * row + g * _headDim, _headDim));
            store.Flush(_options.FlushThreshold);
        }
        _layerLength[layer] = start + count;
    }

    /// <summary>Query positions attended together by one pass over a head's blocks (prefill).</summary>
    private const int PositionsPerJob = 8;

    /// <inheritdoc />
    public void Attend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, Span<float> output)
    {
        CheckLayer(layer);
        int length = _layerLength[layer];
        if (firstPosition < 0 || firstPosition + count > length)
            throw new InvalidOperationException($"queries up to position {firstPosition + count - 1} but layer {layer} holds {length} tokens");
        int group = _heads / _kvHeads, hd = _headDim, qRow = _heads * hd, storeLayer = StoreLayer(layer);
        var q = queries.Slice(0, count * qRow).ToArray();
        var o = new float[count * qRow];
        var lse = StatisticsRows(count, firstPosition);
        long work = (long)count * _heads * hd * (firstPosition + count);
        // One job per (run of up to PositionsPerJob query tokens, KV head): one pass over the head's blocks serves
        // every query of the run (prefill pays each block's overhead once per run, not per token); each job writes
        // its outputs once (neighbouring jobs' outputs share cache lines). Small attentions stay on the calling
        // thread: a dispatch costs more than it saves.
        int runs = (count + PositionsPerJob - 1) / PositionsPerJob;
        // A decode-sized call over long heads is split along the tokens when the heads alone would not keep every thread busy.
        if (runs > 1 || work < 1 << 18 || !TryAttendSplit(layer, q, count, firstPosition, o, lse))
            Compute.Cpu.CpuThreads.For(runs * _kvHeads, work < (1 << 18) ? int.MaxValue : 1, (start, end) =>
        {
            for (int job = start; job < end; job++)
            {
                int t = job / _kvHeads * PositionsPerJob, g = job % _kvHeads, offset = t * qRow + g * group * hd;
                int m = Math.Min(PositionsPerJob, count - t), span = (m - 1) * qRow + group * hd;
                PagedAttention.Attend(_stores[storeLayer * _kvHeads + g], new ReadOnlySpan<float>(q, offset, span), qRow, m,
                    group, hd, firstPosition + t, new Span<float>(o, offset, span), qRow,
                    lse == null ? default : new Span<float>(lse, t * _heads + g * group, (m - 1) * _heads + group), _heads);
            }
        });
        if (lse != null) AccumulateStatistics(layer, q, count, firstPosition, lse);
        o.CopyTo(output);
    }

    /// <inheritdoc />
    /// <remarks>Blocks past the cut go back to the pool; a block straddling it in the cache's own formats becomes float tail rows, one in other formats is re-encoded in them.</remarks>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), $"cannot roll back to {length}: the cache holds {Length} tokens");
        ThrowIfCollectingStatistics("truncate");
        foreach (var s in _stores) s.Truncate(length);
        for (int l = 0; l < _layers; l++) _layerLength[l] = Math.Min(_layerLength[l], length);
    }

    /// <summary>Original positions of the tokens (layer, KV head) stores, ascending (a shared layer's are its source's).</summary>
    public IReadOnlyList<int> Positions(int layer, int kvHead) => Store(layer, kvHead).Positions;

    /// <summary><see cref="Positions"/> as a span, valid until the cache changes (a decode press reads every head's at every step).</summary>
    internal ReadOnlySpan<int> PositionSpan(int layer, int kvHead) => Store(layer, kvHead).PositionSpan;

    /// <summary>The encoded blocks (layer, KV head) reads, in storage order (for tests and tools that check the layout).</summary>
    internal IReadOnlyList<BlockEntry> Blocks(int layer, int kvHead) => Store(layer, kvHead).Blocks;

    /// <summary>
    /// The stored tokens of (layer, KV head) decoded to float: [Positions.Count, headDim] keys (after RoPE) and values,
    /// in <see cref="Positions"/> order, each as its block's format reproduces it. For inspection and scoring; attention
    /// never makes this copy.
    /// </summary>
    public (float[] Keys, float[] Values) Read(int layer, int kvHead)
    {
        var store = Store(layer, kvHead);
        var keys = new float[store.Positions.Count * _headDim];
        var values = new float[keys.Length];
        store.Read(keys, values);
        return (keys, values);
    }

    /// <summary>Evicts the tokens of (layer, KV head) whose original position is in <paramref name="positions"/>.</summary>
    /// <remarks>See <see cref="Evict(int, int, ReadOnlySpan{bool})"/> for how blocks are rebuilt.</remarks>
    public void Evict(int layer, int kvHead, IReadOnlySet<int> positions)
    {
        ArgumentNullException.ThrowIfNull(positions);
        var store = OwnStore(layer, kvHead, "evict");
        ThrowIfCollectingStatistics("evict");
        var mask = new bool[store.Positions.Count];
        for (int i = 0; i < mask.Length; i++) mask[i] = positions.Contains(store.Positions[i]);
        store.Evict(mask);
    }

    /// <summary>
    /// Evicts the stored tokens of (layer, KV head) flagged in <paramref name="evict"/> (one flag per stored token,
    /// in <see cref="Positions"/> order). Untouched blocks stay as they are (still shared with forks); the kept
    /// tokens of affected blocks are decoded and regrouped by format pair into fresh dense blocks. Float formats
    /// (F32/F16/BF16/FP8) re-encode losslessly; quantized formats re-quantize already-quantized values, adding at most
    /// one more quantization step. Freed blocks go back to the pool.
    /// </summary>
    /// <exception cref="KvSharpException">The layer shares another layer's storage (evict the source's head instead).</exception>
    public void Evict(int layer, int kvHead, ReadOnlySpan<bool> evict)
    {
        var store = OwnStore(layer, kvHead, "evict");
        ThrowIfCollectingStatistics("evict");
        store.Evict(evict);
    }

    /// <summary>
    /// Re-encodes the stored tokens of (layer, KV head) flagged in <paramref name="select"/> (one flag per stored
    /// token, in <see cref="Positions"/> order) with keys in <paramref name="keyFormat"/> and values in
    /// <paramref name="valueFormat"/>; the other tokens keep their formats (mixed precision by token). A block holds
    /// tokens of one format pair wherever their positions lie: blocks with no selected token, or already in the
    /// requested formats, are kept as they are (still shared with forks); the tokens of the others are decoded and
    /// regrouped by format pair into fresh dense blocks, so scattered selections cost no more blocks than contiguous
    /// ones (each format pair ends in at most one partial block). Selected tokens of the float tail join the
    /// target's blocks; the others stay in the tail. Tokens appended afterwards use the cache's own formats.
    /// With <paramref name="balancedKeys"/> the keys are quantized per token (one scale and minimum per token over all
    /// its channels, MiKV's quantizer) after the head's channel balance (<see cref="SetKeyBalance"/>): blocks store
    /// Q(b⊙k), attention scores them with q/b, reads return Q(b⊙k)/b.
    /// </summary>
    /// <exception cref="KvSharpException">The block geometry does not suit a requested format, balanced keys of a float format, or the layer shares another layer's storage.</exception>
    /// <exception cref="InvalidOperationException">Balanced keys on a head without a key balance.</exception>
    public void Requantize(int layer, int kvHead, ReadOnlySpan<bool> select, KvFormat keyFormat, KvFormat valueFormat, bool balancedKeys = false)
    {
        var store = OwnStore(layer, kvHead, "re-quantize");
        ThrowIfCollectingStatistics("re-quantize");
        var formats = _pools.Formats(keyFormat, valueFormat, balancedKeys);
        if (balancedKeys && store.KeyBalance is null)
            throw new InvalidOperationException($"layer {layer}, KV head {kvHead}: balanced keys need SetKeyBalance first");
        store.Requantize(select, formats);
    }

    /// <summary>
    /// Sets the per-channel key balance b of (layer, KV head) (MiKV: b_c = sqrt(max|q_c| / max|k_c|)), each factor
    /// rounded to the nearest power of two so that scaling is exact. Only blocks re-quantized with balanced keys use it;
    /// it cannot change once such blocks exist.
    /// </summary>
    /// <exception cref="ArgumentException">Not one positive finite factor per channel.</exception>
    /// <exception cref="InvalidOperationException">The head already holds balanced key blocks.</exception>
    /// <exception cref="KvSharpException">The layer shares another layer's storage.</exception>
    public void SetKeyBalance(int layer, int kvHead, ReadOnlySpan<float> balance) => OwnStore(layer, kvHead, "balance").SetKeyBalance(balance);

    /// <summary>The key balance of (layer, KV head) as stored (powers of two), or null when none was set.</summary>
    public IReadOnlyList<float>? KeyBalance(int layer, int kvHead) => Store(layer, kvHead).KeyBalance;

    /// <summary>
    /// As <see cref="Requantize(int, int, ReadOnlySpan{bool}, KvFormat, KvFormat, bool)"/> with explicit block layouts, for
    /// formats whose parameters the format alone does not fix (VidKV's outlier channels and salient tokens).
    /// </summary>
    /// <exception cref="KvSharpException">A layout does not have the cache's block tokens and head dimension, or the layer shares another layer's storage.</exception>
    public void RequantizeToLayouts(int layer, int kvHead, ReadOnlySpan<bool> select, BlockLayout keyLayout, BlockLayout valueLayout)
    {
        var store = OwnStore(layer, kvHead, "re-quantize");
        ThrowIfCollectingStatistics("re-quantize");
        store.Requantize(select, _pools.Formats(keyLayout, valueLayout));
    }

    /// <summary>
    /// A new cache holding the same tokens that shares every encoded block copy-on-write (blocks are never
    /// modified once encoded, so sharing needs only a reference count). Dispose it independently.
    /// </summary>
    public PagedKvCache Fork()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new PagedKvCache(this);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var s in _stores) s.Clear();
        _pools.RemoveOwner();
    }

    /// <summary>The store (layer, KV head) reads: its own, or its source layer's when shared.</summary>
    private HeadStore Store(int layer, int kvHead) => StoreOf(StoreLayerChecked(layer), kvHead);

    /// <summary>The store (layer, KV head) owns, for an operation that changes it; refused for a shared layer.</summary>
    private HeadStore OwnStore(int layer, int kvHead, string operation)
    {
        if (StoreLayerChecked(layer) != layer)
            throw new KvSharpException($"cannot {operation} layer {layer}, KV head {kvHead}: layer {layer} stores no KV of its own, it shares layer {_shareSource[layer]}'s (ShareLayer); {operation} layer {_shareSource[layer]}'s head instead, which changes every layer reading it");
        return StoreOf(layer, kvHead);
    }

    /// <summary>The store (layer, KV head) holds itself (empty for a shared layer).</summary>
    private HeadStore StoreOf(int layer, int kvHead)
    {
        CheckLayer(layer);
        if ((uint)kvHead >= (uint)_kvHeads) throw new ArgumentOutOfRangeException(nameof(kvHead), $"KV head {kvHead} of {_kvHeads}");
        return _stores[layer * _kvHeads + kvHead];
    }

    private int StoreLayerChecked(int layer)
    {
        CheckLayer(layer);
        return StoreLayer(layer);
    }

    private int StoreLayer(int layer) => _shareSource[layer] < 0 ? layer : _shareSource[layer];

    private void CheckLayer(int layer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if ((uint)layer >= (uint)_layers) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {_layers}");
    }
}
