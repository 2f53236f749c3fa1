using System.Runtime.InteropServices;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// The compressed KV cache in device memory: a pool of encoded blocks in exactly the byte layout of the CPU
/// <see cref="PagedKvCache"/>'s blocks (<see cref="BlockLayout"/>), and per (layer, KV head) a table of block
/// descriptors (pool offsets, token count, key and value formats) and the head's own length. Each head ends in a
/// float32 residual block in a slot reserved for it: appended tokens land there, and a residual that fills is
/// encoded on the device in the cache's formats (keys per channel, values per token in channel groups, as KIVI).
/// Heads may hold different numbers of tokens (eviction) and blocks of different formats (mixed precision).
/// With <see cref="DeviceKvCache.Batch"/> &gt; 1 every sequence has its own heads (tables, lengths, residual slots) in
/// one shared pool, laid out [layer, sequence, KV head] (<see cref="HeadIndex"/>): a graph decode step appends each
/// sequence's token and one attention launch per layer reads every sequence's heads.
/// </summary>
/// <remarks>
/// <para>Uploading a CPU cache (<see cref="Upload(CudaDevice, ModelConfig, PagedKvCache, int, long?)"/>) copies its encoded blocks and builds the tables; its float tail
/// becomes the residual (a tail longer than one block, from a KIVI residual R &gt; BlockTokens, arrives as F32 blocks
/// plus the residual: the device encodes each block as soon as it fills).</para>
/// <para><see cref="Evict(IReadOnlyList{bool[]})"/> runs on the device: untouched blocks are kept, each run of affected blocks is decoded and
/// re-encoded in its own formats, and the pool is compacted. The storage order stays, so a run ends in a partial block where
/// the CPU cache's Evict regroups all the affected blocks' tokens (at most one partial block per format pair); a float block
/// kept whole after a partial one of its formats joins it instead of ending it, so a cache of one float format holds as many
/// blocks as the CPU's (a quantized one may hold more: its untouched blocks are not re-quantized).</para>
/// </remarks>
public sealed partial class CudaPagedKvCache : DeviceKvCache
{
    private const int DescriptorBytes = 16;
    private readonly CudaPagedKernels _kernels;
    private readonly DeviceBuffer _pool, _desc, _headBlocks, _headTokens, _state; // state: pool top (16-byte units), error code
    private readonly DeviceBuffer _arrivals; // per head: blocks of a fused QKV product or a split batch append done with it (zero between launches)
    private readonly DeviceBuffer _claims;   // per head: a split batch append's shared slot reservation (64-bit; zero between launches)
    private byte[]? _keptHostFlags;          // an eviction's scratch while KeepsPressBuffers: drop flags on the host and the device,
    private DeviceBuffer? _keptFlags, _keptFresh, _keptStaging; // the compacted pool's used part, the staging rows
    private readonly int _residualUnits, _group;
    private int _blocksAtSync, _lengthAtSync;
    private long _layerBlocksAtSync;
    private PagedAttentionKernel _attentionKernel;

    /// <summary>An empty cache for up to <paramref name="capacity"/> positions, encoding in the formats of <paramref name="options"/>.</summary>
    /// <param name="device">The GPU.</param>
    /// <param name="config">The model the cache is for.</param>
    /// <param name="options">Formats and block geometry (keys per channel over a block, values per token in channel groups).</param>
    /// <param name="capacity">Most positions the cache accepts.</param>
    /// <param name="poolBytes">Device bytes for encoded blocks; default: every head of every sequence full in the cache's formats.</param>
    /// <param name="batch">Sequences (1..8), each with its own heads and length, decoded together.</param>
    /// <exception cref="KvSharpException">The model shape or the options are not what the device kernels support (VidKV formats among them).</exception>
    public CudaPagedKvCache(CudaDevice device, ModelConfig config, PagedKvCacheOptions options, int capacity, long? poolBytes = null, int batch = 1)
        : this(device, config, options, capacity, TableBlocks(options, capacity), poolBytes, null, batch)
    {
        var host = EmptyTables();
        UploadTables(host.Desc, host.Blocks, host.Tokens, ReservedUnits);
        StartPositions();
    }

    private CudaPagedKvCache(CudaDevice device, ModelConfig config, PagedKvCacheOptions options, int capacity, int maxBlocks, long? poolBytes, long? poolUnits,
        int batch)
        : base(device, Validated(config, options), capacity, batch)
    {
        int hd = config.HeadDim;
        _group = config.NumHeads / config.NumKvHeads;
        var (keys, values) = options.Layouts(hd);
        Options = options;
        KeyLayout = keys;
        ValueLayout = values;
        _attentionKernel = DefaultAttentionKernel(_group, hd, ValueGroup, keys.Tokens, keys.Format);
        NoteFormats(keys.Format, values.Format);
        NoteFormats(KvFormat.F32, KvFormat.F32); // the residual
        HeadCount = config.NumLayers * batch * config.NumKvHeads;
        MaxBlocks = maxBlocks;
        _residualUnits = Units(BlockTokens * hd * sizeof(float));
        long units = poolUnits ?? (poolBytes is { } b ? b / 16 : ReservedUnits + (long)HeadCount * (maxBlocks - 1) * (Units(keys.ByteSize) + Units(values.ByteSize)));
        if (units < ReservedUnits || units > uint.MaxValue)
            throw new KvSharpException($"CUDA paged KV cache: a pool of {units * 16} bytes must hold the {ReservedUnits * 16L} bytes of residual blocks and stay under 64 GiB");
        PoolUnits = units;
        _kernels = CudaPagedKernels.For(device);
        try
        {
            _pool = device.Allocate(units * 16);
            _desc = device.Allocate((long)HeadCount * maxBlocks * DescriptorBytes);
            _headBlocks = device.Allocate(HeadCount * sizeof(int));
            _headTokens = device.Allocate(HeadCount * sizeof(int));
            _state = device.Allocate(4 * sizeof(int));
            _arrivals = device.Allocate(HeadCount * sizeof(int));
            _arrivals.Fill32(0);
            _claims = device.Allocate(HeadCount * sizeof(ulong));
            _claims.Fill32(0);
        }
        catch
        {
            DisposeBuffers();
            base.Dispose();
            throw;
        }
    }

    /// <summary>Descriptors per head for an empty cache of <paramref name="capacity"/> positions: full blocks plus the residual.</summary>
    private static int TableBlocks(PagedKvCacheOptions options, int capacity)
    {
        ArgumentNullException.ThrowIfNull(options);
        return (capacity + options.BlockTokens - 1) / Math.Max(1, options.BlockTokens) + 1;
    }

    /// <summary>Checks the model shape and the options before anything is allocated.</summary>
    private static ModelConfig Validated(ModelConfig config, PagedKvCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        int group = config.NumHeads / config.NumKvHeads;
        if (!CudaPagedKernels.Supports(group, config.HeadDim))
            throw new KvSharpException($"the CUDA paged KV cache supports 1, 2, 3, 4 or 8 query heads per KV head and head dimension 64 or 128, not {group} and {config.HeadDim}");
        if (options.KeyFormat.IsVidKv() || options.ValueFormat.IsVidKv())
            throw new KvSharpException(VidKvRefusal($"encoding appended tokens as {options.KeyFormat} / {options.ValueFormat} blocks"));
        _ = options.Layouts(config.HeadDim);
        if (!CudaPagedKernels.SupportsValueGroup(Math.Min(options.ValueChannelGroup, config.HeadDim)))
            throw new KvSharpException($"the CUDA paged KV cache needs value channel groups that are a multiple of 16, not {options.ValueChannelGroup}");
        return config;
    }

    /// <summary>
    /// The attention kernel a new cache starts with (H100 measurements, docs/benchmarks.md "Compressed decode: bytes in
    /// flight"): the pipelined tensor-core kernel where it reads the shape, except for INT8 keys, where the plain
    /// tensor-core kernel was as fast at 128K and 3-6% faster at 32K (FP8 too until its fragments took one conversion a
    /// code pair: since stop 18 the pipelined kernel is 4-7% faster for FP8 in every row, "FP8 E4M3 fragments by one
    /// cvt"); then the tensor-core kernel (blocks of more than 32 tokens); on CUDA cores, 16-byte loads of several tokens
    /// for keys of at most 4 bits, lane-owned channels otherwise.
    /// </summary>
    public static PagedAttentionKernel DefaultAttentionKernel(int group, int headDim, int valueGroup, int blockTokens, KvFormat keyFormat)
    {
        if (CudaPagedKernels.SupportsPipelined(group, headDim, valueGroup, blockTokens) && keyFormat != KvFormat.Int8)
            return PagedAttentionKernel.Pipelined;
        if (CudaPagedKernels.SupportsTensorCores(group, headDim, valueGroup)) return PagedAttentionKernel.TensorCores;
        return keyFormat.BitsPerElement() <= 4 ? PagedAttentionKernel.Wide : PagedAttentionKernel.LaneChannels;
    }

    /// <summary>The message of the refusal of what the device does not do with VidKV blocks (it reads them in attention and encodes them for the vidkv press; docs/cuda.md).</summary>
    private static string VidKvRefusal(string what) =>
        $"the CUDA paged KV cache does not support VidKV for {what} (the device reads VidKV blocks in attention and encodes them for the vidkv press only); use another format on the GPU or the CPU cache";

    /// <summary>
    /// Whether the decode attention asks L2 for the layer's descriptor tables before it waits for the append (the
    /// attention kernels' L2 prefetch, whose second range is free; default: on). Why: at batch 1 a pipelined unit took
    /// 2.6 µs from griddepcontrol.wait to its staged descriptors, read from device memory (a step streams ~10 times L2
    /// between two reads of a layer's table); its blocks are resident ~3.5 µs before the wait returns. Measured on an H100
    /// (stop 27): 0.1% off the batch-1 compressed steps, neutral elsewhere. A hint only: the append's writes to the tables
    /// reach L2 as any write does.
    /// </summary>
    public bool PrefetchTables { get; set; } = true;

    /// <summary>
    /// The decode attention kernel (all are checked). By default <see cref="DefaultAttentionKernel"/>'s choice for the
    /// cache's shape and key format (the pipelined tensor-core kernel where it reads them, but for INT8 keys); the VidKV
    /// one, the only one that reads VidKV blocks, for a cache holding them.
    /// </summary>
    /// <exception cref="KvSharpException">A tensor-core kernel is asked for a shape it does not read, or another kernel than VidKv for a cache holding VidKV blocks.</exception>
    public PagedAttentionKernel AttentionKernel
    {
        get => _attentionKernel;
        set
        {
            if (value is PagedAttentionKernel.TensorCores or PagedAttentionKernel.Pipelined && !CudaPagedKernels.SupportsTensorCores(_group, Config.HeadDim, ValueGroup))
                throw new KvSharpException($"the CUDA paged KV cache's tensor-core attention ({value}) needs head dimension 128 and value groups of 32, 64 or 128 channels, not {Config.HeadDim} and {ValueGroup}");
            if (value == PagedAttentionKernel.Pipelined && BlockTokens > 32)
                throw new KvSharpException($"the CUDA paged KV cache's pipelined attention needs blocks of at most 32 tokens, not {BlockTokens}");
            if (HoldsVidKv && value != PagedAttentionKernel.VidKv)
                throw new KvSharpException($"the CUDA paged KV cache holds VidKV blocks, which only the {PagedAttentionKernel.VidKv} attention kernel reads, not {value}");
            _attentionKernel = value;
        }
    }

    /// <summary>Formats and block geometry of blocks encoded on this cache's appends.</summary>
    public PagedKvCacheOptions Options { get; }

    /// <summary>Layout of key blocks encoded from appended tokens.</summary>
    public BlockLayout KeyLayout { get; }

    /// <summary>Layout of value blocks encoded from appended tokens.</summary>
    public BlockLayout ValueLayout { get; }

    /// <summary>Tokens per block.</summary>
    public int BlockTokens => KeyLayout.Tokens;

    /// <summary>Channels per quantization group of value blocks.</summary>
    internal int ValueGroup => ValueLayout.Format.IsQuantized() ? ValueLayout.GroupSize : Math.Min(Options.ValueChannelGroup, Config.HeadDim);

    /// <summary>Layers × sequences × KV heads.</summary>
    internal int HeadCount { get; }

    /// <summary>Index of (layer, sequence, KV head) in the tables and in per-head lists ([layer, sequence, KV head]).</summary>
    public int HeadIndex(int layer, int sequence, int kvHead) => (layer * Batch + sequence) * Config.NumKvHeads + kvHead;

    /// <summary>Descriptors per head's table.</summary>
    internal int MaxBlocks { get; }

    /// <summary>Pool size in 16-byte units.</summary>
    internal long PoolUnits { get; }

    private int ReservedUnits => HeadCount * 2 * _residualUnits;

    /// <inheritdoc />
    public override long ByteCount => _pool.ByteLength + _desc.ByteLength;

    /// <summary>
    /// Bytes one decode step's attention reads (every head's blocks at their layouts' exact size, the residual's rows);
    /// reads the tables back from the device.
    /// </summary>
    public override long BytesReadPerToken
    {
        get
        {
            long total = 0;
            var (desc, blocks, _) = DownloadTables();
            int hd = Config.HeadDim;
            for (int h = 0; h < HeadCount; h++)
                for (int b = 0; b < blocks[h]; b++)
                {
                    var (_, _, count, kf, vf, _) = Descriptor(desc, h, b);
                    total += b == blocks[h] - 1 ? 2L * count * hd * sizeof(float) : LayoutOf(kf, true).ByteSize + LayoutOf(vf, false).ByteSize;
                }
            return total;
        }
    }

    /// <summary>Stored tokens of every head, indexed by <see cref="HeadIndex"/> ([layer · kvHeads + head] at batch 1; reads them back from the device).</summary>
    public int[] HeadLengths()
    {
        var tokens = new int[HeadCount];
        _headTokens.Download<int>(tokens);
        return tokens;
    }

    /// <summary>
    /// A device copy of <paramref name="source"/>: its encoded blocks byte for byte, each head's float tail as the
    /// residual, room for up to <paramref name="capacity"/> positions.
    /// </summary>
    /// <exception cref="KvSharpException">The cache does not fit the model, the capacity or the device's kernels (VidKV options, whose
    /// appends the device does not encode; VidKV blocks of more than one setting).</exception>
    public static CudaPagedKvCache Upload(CudaDevice device, ModelConfig config, PagedKvCache source, int capacity, long? poolBytes = null) =>
        Upload(device, config, [source], capacity, poolBytes);

    /// <summary>
    /// A device cache of <paramref name="sources"/>.Count sequences, sequence i a copy of <paramref name="sources"/>[i] (each
    /// pressed on its own: its own lengths per head and block formats), room for up to <paramref name="capacity"/> positions each.
    /// </summary>
    /// <exception cref="KvSharpException">A cache does not fit the model, the capacity, the others' formats and block geometry or
    /// the device's kernels (VidKV options; VidKV blocks of more than one setting), or there are not 1..8 of them.</exception>
    public static CudaPagedKvCache Upload(CudaDevice device, ModelConfig config, IReadOnlyList<PagedKvCache> sources, int capacity, long? poolBytes = null)
    {
        ArgumentNullException.ThrowIfNull(sources);
        if (sources.Count < 1 || sources.Count > CudaKernels.MaxGemvRows)
            throw new KvSharpException($"a CUDA paged KV cache holds 1..{CudaKernels.MaxGemvRows} sequences, not {sources.Count}");
        var options = sources[0].Options;
        foreach (var source in sources)
        {
            ArgumentNullException.ThrowIfNull(source);
            if (source.Layers != config.NumLayers || source.KvHeads != config.NumKvHeads || source.KeyLayout.HeadDim != config.HeadDim)
                throw new KvSharpException($"the paged KV cache ({source.Layers} layers, {source.KvHeads} KV heads, head dimension {source.KeyLayout.HeadDim}) does not fit the model");
            if (capacity < source.Length) throw new KvSharpException($"capacity {capacity} is below the {source.Length} tokens of the cache");
            var o = source.Options;
            if (o.KeyFormat != options.KeyFormat || o.ValueFormat != options.ValueFormat || o.BlockTokens != options.BlockTokens || o.ValueChannelGroup != options.ValueChannelGroup)
                throw new KvSharpException($"the paged KV caches of one batch need the same formats and block geometry ({o.KeyFormat}/{o.ValueFormat}, {o.BlockTokens} tokens, groups of {o.ValueChannelGroup} differ from {options.KeyFormat}/{options.ValueFormat}, {options.BlockTokens}, {options.ValueChannelGroup})");
        }
        int t = options.BlockTokens, hd = config.HeadDim, batch = sources.Count, perSequence = config.NumLayers * config.NumKvHeads;
        var stores = new HeadStore[perSequence * batch];
        int longest = 1;
        long used = 0;
        for (int l = 0; l < config.NumLayers; l++)
            for (int q = 0; q < batch; q++)
                for (int g = 0; g < config.NumKvHeads; g++)
                {
                    var s = stores[(l * batch + q) * config.NumKvHeads + g] = sources[q].ReadStore(l, g);
                    if (s.Blocks.Any(e => e.Formats.BalancedKeys))
                        throw new KvSharpException($"layer {l} KV head {g} of the paged KV cache stores balanced keys (a per-channel key balance), which the CUDA paged KV cache does not read");
                    longest = Math.Max(longest, s.Blocks.Count + s.TailCount / t + 1);
                    foreach (var e in s.Blocks) used += Units(e.KeyLayout.ByteSize) + Units(e.ValueLayout.ByteSize);
                    used += (long)(s.TailCount / t) * 2 * Units(t * hd * sizeof(float));
                }
        int growth = (capacity - sources.Min(x => x.Length) + t - 1) / t;
        int maxBlocks = longest + growth;
        var probe = BlockLayout.ForKeys(options.KeyFormat, hd, t);
        long room = (long)stores.Length * growth * (Units(probe.ByteSize) + Units(BlockLayout.ForValues(options.ValueFormat, hd, t, options.ValueChannelGroup).ByteSize));
        var cache = new CudaPagedKvCache(device, config, options, capacity, maxBlocks, poolBytes,
            poolBytes == null ? stores.Length * 2L * Units(t * hd * 4) + used + room : null, batch);
        try
        {
            cache.AdoptVidKv(stores);
            cache.CopyFrom(stores);
            for (int q = 0; q < batch; q++) cache.SetLength(q, sources[q].Length);
            cache.StartPositions(stores);
            cache.Resync();
            return cache;
        }
        catch
        {
            cache.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A cache of <paramref name="batch"/> sequences of <paramref name="length"/> positions whose heads hold
    /// <paramref name="storedTokens"/>[<see cref="HeadIndex"/>] tokens of random K/V in the formats of <paramref name="options"/>
    /// (full blocks, the rest in the residual): decode benchmarks of compressed caches at long contexts without a prefill
    /// (attention reads the same bytes whatever the values). With <paramref name="vidKv"/>, every full block is a copy of
    /// its VidKV block pair instead (appends still encode in the formats of <paramref name="options"/>).
    /// </summary>
    internal static CudaPagedKvCache Synthesize(CudaDevice device, CudaKernels kernels, ModelConfig config, PagedKvCacheOptions options,
        IReadOnlyList<int> storedTokens, int length, int capacity, uint seed, int batch = 1, VidKvTemplate? vidKv = null)
    {
        int t = options.BlockTokens, heads = config.NumLayers * batch * config.NumKvHeads;
        if (storedTokens.Count != heads) throw new ArgumentException($"{storedTokens.Count} head lengths for {heads} heads", nameof(storedTokens));
        if (storedTokens.Any(n => n < 0 || n > length)) throw new ArgumentException($"head lengths must be in 0..{length}", nameof(storedTokens));
        int growth = (capacity - length + t - 1) / t + 1;
        int maxBlocks = storedTokens.Max() / t + growth + 1;
        var (keys, values) = vidKv is { } vt ? (vt.KeyLayout, vt.ValueLayout) : options.Layouts(config.HeadDim);
        int ku = Math.Max(Units(keys.ByteSize), Units(options.Layouts(config.HeadDim).Keys.ByteSize));
        int vu = Math.Max(Units(values.ByteSize), Units(options.Layouts(config.HeadDim).Values.ByteSize));
        long units = heads * 2L * Units(t * config.HeadDim * 4) + storedTokens.Sum(n => (long)(n / t + growth)) * (ku + vu);
        var cache = new CudaPagedKvCache(device, config, options, capacity, maxBlocks, null, units, batch);
        try
        {
            var (desc, blocks, tokens) = cache.EmptyTables();
            long top = cache.ReservedUnits;
            uint meta = Meta(t, keys.Format, values.Format);
            cache.NoteFormats(keys.Format, values.Format);
            for (int h = 0; h < heads; h++)
            {
                int full = storedTokens[h] / t;
                for (int b = 0; b < full; b++)
                {
                    SetDescriptor(desc, cache.MaxBlocks, h, b, (uint)top, (uint)(top + ku), meta, (uint)(b * t));
                    top += ku + vu;
                }
                SetDescriptor(desc, cache.MaxBlocks, h, full, cache.ResidualKeys(h), cache.ResidualKeys(h) + (uint)cache._residualUnits,
                    Meta(storedTokens[h] % t, KvFormat.F32, KvFormat.F32), (uint)(full * t));
                blocks[h] = full + 1;
                tokens[h] = storedTokens[h];
            }
            kernels.FillRandomF16(cache._pool.Pointer, cache._pool.ByteLength / 2, seed, 1.0f);
            if (vidKv != null)
            {
                var stager = new Stager(cache._pool, cache.ReservedUnits);
                var keyBytes = vidKv.Keys.AsSpan(0, keys.ByteSize).ToArray().Concat(new byte[ku * 16 - keys.ByteSize]).ToArray();
                var valueBytes = vidKv.Values.AsSpan(0, values.ByteSize).ToArray().Concat(new byte[vu * 16 - values.ByteSize]).ToArray();
                for (long b = 0, n = (top - cache.ReservedUnits) / (ku + vu); b < n; b++) { stager.Add(keyBytes); stager.Add(valueBytes); }
                stager.Finish();
                (cache._vidOutliers, cache._vidSalient) = (keys.GroupSize, values.GroupSize);
                cache.EnableVidKv();
            }
            cache.UploadTables(desc, blocks, tokens, top);
            cache.SetAllLengths(length);
            cache.Resync();
            return cache;
        }
        catch
        {
            cache.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Drops the stored tokens flagged in <paramref name="drop"/>[<see cref="HeadIndex"/>] (one flag per stored token of that
    /// head, in the device's storage order: an uploaded cache's blocks in the CPU store's block order, then its tail, then
    /// appended tokens; the CPU cache's masks follow ascending position instead, which differs once re-quantization has
    /// regrouped tokens), on the device: blocks without a dropped token are kept as they are, the kept tokens of each run of
    /// affected blocks are re-encoded in their own formats (a run may end in a partial block; a float block without a
    /// dropped token that follows one of its formats joins it), the pool is compacted.
    /// </summary>
    /// <exception cref="ArgumentException">A mask's length is not its head's stored token count.</exception>
    public void Evict(IReadOnlyList<bool[]> drop)
    {
        ArgumentNullException.ThrowIfNull(drop);
        if (drop.Count != HeadCount) throw new ArgumentException($"{drop.Count} masks for {HeadCount} heads", nameof(drop));
        Evict(Enumerable.Range(0, HeadCount).ToArray(), drop);
    }

    /// <summary>
    /// <see cref="Evict(IReadOnlyList{bool[]})"/> of one sequence: <paramref name="drop"/>[layer · kvHeads + head] flags that
    /// sequence's stored tokens; the other sequences keep all of theirs (their blocks move in the compacted pool).
    /// </summary>
    /// <exception cref="ArgumentException">A mask's length is not its head's stored token count.</exception>
    /// <exception cref="KvSharpException">The sequence is outside the batch.</exception>
    public void Evict(int sequence, IReadOnlyList<bool[]> drop)
    {
        ArgumentNullException.ThrowIfNull(drop);
        if ((uint)sequence >= (uint)Batch) throw new KvSharpException($"sequence {sequence} is outside the cache's batch of {Batch}");
        int kvHeads = Config.NumKvHeads;
        if (drop.Count != Config.NumLayers * kvHeads) throw new ArgumentException($"{drop.Count} masks for {Config.NumLayers * kvHeads} heads of a sequence", nameof(drop));
        Evict(Enumerable.Range(0, drop.Count).Select(i => HeadIndex(i / kvHeads, sequence, i % kvHeads)).ToArray(), drop);
    }

    /// <summary>Evicts by <paramref name="drop"/>[i] in head <paramref name="heads"/>[i]; heads not listed keep every token.</summary>
    private void Evict(int[] heads, IReadOnlyList<bool[]> drop)
    {
        if (_statistics != null) throw new InvalidOperationException("cannot evict while attention statistics are being collected");
        var lengths = HeadLengths();
        int maxTokens = MaxBlocks * BlockTokens;
        var flags = KeepsPressBuffers ? (_keptHostFlags ??= new byte[(long)HeadCount * maxTokens]) : new byte[(long)HeadCount * maxTokens];
        if (KeepsPressBuffers) Array.Clear(flags);
        for (int i = 0; i < heads.Length; i++)
        {
            int h = heads[i];
            if (drop[i].Length != lengths[h]) throw new ArgumentException($"head {h}'s mask has {drop[i].Length} flags but the head stores {lengths[h]} tokens", nameof(drop));
            for (int j = 0; j < lengths[h]; j++) flags[(long)h * maxTokens + j] = drop[i][j] ? (byte)1 : (byte)0;
        }
        var deviceFlags = Scratch(ref _keptFlags, flags.Length, flags.Length, out bool owned);
        try
        {
            deviceFlags.Upload<byte>(flags);
            EvictOnDevice(deviceFlags, flags);
        }
        finally
        {
            if (owned) deviceFlags.Dispose();
        }
    }

    /// <summary>
    /// A device scratch buffer of at least <paramref name="bytes"/>: while <see cref="KeepsPressBuffers"/>, the kept one
    /// (<paramref name="kept"/>, reallocated when short, a quarter over but at most <paramref name="limit"/>: the compacted pool
    /// grows with the blocks a head holds); otherwise a new one the caller disposes (<paramref name="owned"/>).
    /// </summary>
    private DeviceBuffer Scratch(ref DeviceBuffer? kept, long bytes, long limit, out bool owned)
    {
        owned = !KeepsPressBuffers;
        if (owned) return Device.Allocate(bytes);
        if (kept == null || kept.ByteLength < bytes)
        {
            kept?.Dispose();
            kept = null;
            kept = Device.Allocate(Math.Min(limit, bytes + bytes / 4));
        }
        return kept;
    }

    /// <summary>
    /// <see cref="Evict(IReadOnlyList{bool[]})"/> with the drop flags already on the device: [HeadCount, MaxBlocks · BlockTokens] bytes, nonzero = drop
    /// (what a device-side scorer writes), and their copy on the host when the caller has one (<paramref name="hostFlags"/>:
    /// not read back). The pool keeps its address, so captured decode graphs stay valid; kept running sums
    /// (<see cref="StartRunningSums"/>) are compacted by the same flags.
    /// </summary>
    internal void EvictOnDevice(DeviceBuffer flags, byte[]? hostFlags = null)
    {
        RefuseVidKv("eviction");
        int maxTokens = MaxBlocks * BlockTokens;
        if (hostFlags != null) EvictPositions(hostFlags, maxTokens);
        else if (_storedPositions != null)
        {
            // Only the stored tokens' flags, one strided copy (the whole table is a head's capacity, ~2 MB at 8K tokens of Llama-3.1-8B).
            int width = Enumerable.Range(0, HeadCount).Max(StoredCount);
            var packed = KeepsPressBuffers ? (_keptHostFlags ??= new byte[(long)HeadCount * maxTokens]) : new byte[(long)HeadCount * width];
            flags.Download2D<byte>(packed, 0, maxTokens, width, HeadCount);
            EvictPositions(packed, width);
        }
        if (_runningSums != null) _kernels.CompactSums(_runningSums.Pointer, flags.Pointer, _headTokens.Pointer, HeadCount, maxTokens);
        _layoutVersion++;
        var state = new int[2];
        _state.Download<int>(state);
        // The compaction writes at most the units in use (state[0], the pool's top): a block is copied as it is, and each run of
        // blocks of one format pair re-encodes its kept tokens into at most as many blocks of that pair. So the scratch pool is
        // the used part, not the whole pool (a decode press compacts at every compression; a whole pool is the cache's capacity,
        // a GiB at 8K tokens of Llama-3.1-8B, allocated and freed each time).
        long used = Math.Min(PoolUnits, (uint)state[0]);
        long stagingBytes = (long)HeadCount * 2 * BlockTokens * Config.HeadDim * sizeof(float);
        var fresh = Scratch(ref _keptFresh, used * 16, PoolUnits * 16, out bool ownsFresh);
        var staging = Scratch(ref _keptStaging, stagingBytes, stagingBytes, out bool ownsStaging);
        try
        {
            CompactPool(flags, fresh, used, staging);
        }
        finally
        {
            if (ownsFresh) fresh.Dispose();
            if (ownsStaging) staging.Dispose();
        }
    }

    /// <summary>paged_evict by <paramref name="flags"/> into <paramref name="fresh"/> (<paramref name="used"/> units), then back into the pool.</summary>
    private void CompactPool(DeviceBuffer flags, DeviceBuffer fresh, long used, DeviceBuffer staging)
    {
        int hd = Config.HeadDim;
        _state.Upload<int>([ReservedUnits, 0]);
        _kernels.Evict(_pool.Pointer, fresh.Pointer, _desc.Pointer, _headBlocks.Pointer, _headTokens.Pointer, flags.Pointer, staging.Pointer,
            _state.Pointer, _state.Pointer + 4, used, HeadCount, MaxBlocks, MaxBlocks * BlockTokens, BlockTokens, hd, ValueGroup);
        Device.Synchronize();
        CheckDeviceState();
        var top = new int[1];
        _state.Download<int>(top);
        // Back into the original allocation: decode graphs captured over this cache keep pointing at live blocks.
        _pool.CopyFromAsync(fresh, (long)(uint)top[0] * 16);
        Device.Synchronize();
        Resync();
    }

    /// <summary>A head's blocks as stored on the device, residual last (tests compare them with the CPU codec).</summary>
    internal IReadOnlyList<DeviceBlock> ReadHead(int layer, int kvHead, int sequence = 0)
    {
        int h = HeadIndex(layer, sequence, kvHead);
        var (desc, blocks, _) = DownloadTables();
        var result = new List<DeviceBlock>();
        for (int b = 0; b < blocks[h]; b++)
        {
            var (ko, vo, count, kf, vf, start) = Descriptor(desc, h, b);
            var kl = LayoutOf(kf, true);
            var vl = LayoutOf(vf, false);
            var kb = new byte[kl.ByteSize];
            var vb = new byte[vl.ByteSize];
            _pool.Download<byte>(kb, (long)ko * 16);
            _pool.Download<byte>(vb, (long)vo * 16);
            result.Add(new DeviceBlock(kl, vl, count, start, kb, vb));
        }
        return result;
    }

    /// <summary>One block pair read back from the device.</summary>
    internal sealed record DeviceBlock(BlockLayout KeyLayout, BlockLayout ValueLayout, int Count, int Start, byte[] Keys, byte[] Values);

    /// <summary>Prefill chunks attend through the paged kernel with causal rows (the tensor-core kernel reads the float16 cache).</summary>
    internal override bool SupportsFlashPrefill => false;

    internal override CudaKernels.AttentionPlan PlanAttention(CudaKernels kernels, int visible, int rows) => PlanAttention(visible, rows);

    /// <summary>The attention split for <paramref name="rows"/> query rows while the heads grow up to <paramref name="visible"/> positions.</summary>
    private CudaKernels.AttentionPlan PlanAttention(int visible, int rows)
    {
        long growth = ((long)Math.Max(0, visible - _lengthAtSync) + BlockTokens - 1) / BlockTokens;
        int blocks = (int)Math.Min(MaxBlocks, _blocksAtSync + growth);
        long layerBlocks = _layerBlocksAtSync + growth * Config.NumKvHeads;
        return _kernels.Plan(blocks, layerBlocks, rows, _group, Config.NumKvHeads, Config.HeadDim, BlockTokens, AttentionKernel, FormatsHeld, ValueGroup);
    }

    /// <summary>Every block format the cache has held, a bit per <see cref="KvFormat"/> (formats are only ever added).</summary>
    private int _formatsHeld;

    /// <summary>Records the formats of blocks placed in the pool (appends, uploads, re-quantization).</summary>
    private void NoteFormats(KvFormat keys, KvFormat values) => _formatsHeld |= (1 << (int)keys) | (1 << (int)values);

    /// <summary>
    /// The formats of every block the cache has held and of its float32 residual, a bit per <see cref="KvFormat"/>: the
    /// attention plan's kernel build and rings (<see cref="CudaPagedKernels.Plan"/>) follow them.
    /// </summary>
    internal int FormatsHeld => _formatsHeld | 1 << (int)KvFormat.F32;

    internal override bool EnqueueAttention(CudaKernels kernels, in LayerAttention a)
    {
        var c = Config;
        // A batch step's rows are the sequences: the kernels offset sequence 0's tables by row; else the rows are one sequence's.
        int sequence = a.Batch ? 0 : a.Sequence;
        var (desc, blocks, tokens) = LayerTables(a.Layer, sequence);
        CoverStoredTokens(a);
        if (!a.Appended)
        {
            _encodeLayer = -1; // no encode pending (a batch fold that threw before its output product leaves none behind)
            // A batch step's append follows the layer's QKV product (CudaTransformer), which writes none of what it may read early.
            _kernels.RopeAppend(a.Qkv, a.Q, a.QNorm, a.KNorm, a.InvFreq, AppendTarget(a.Layer, sequence), a.Rows, c.NumHeads, c.NumKvHeads, c.HeadDim,
                a.Position, a.Interleaved, a.Eps, a.Batch, early: a.Batch);
        }
        // The layer's descriptor tables (every sequence's in a batch step) asked of L2 in the prefetch's free second range.
        var prefetch = PrefetchTables && a.Prefetch.SecondBytes == 0
            ? new L2Prefetch(a.Prefetch.First, a.Prefetch.FirstBytes, desc, (long)(a.Batch ? Batch : 1) * c.NumKvHeads * MaxBlocks * DescriptorBytes)
            : a.Prefetch;
        // The output product folds into the head merge only where no statistics follow (KVzip+'s weigh by Hidden, which it adds to)
        // and no batch step's encode waits for its launch (EnqueueOutputProduct).
        var projection = a.Projection is { } p && _statistics == null && a.Hidden != 0 && _encodeLayer != a.Layer
            ? new CudaPagedKernels.OutputProjection(p.Pointer, p.Type, p.Rows, a.Hidden)
            : default;
        // A folded batch append (EnqueueBatchFusedQkv) is the kernel just before: the attention may read its tables early.
        bool projected = _kernels.Attention(a.Q, _pool.Pointer, desc, blocks, tokens, a.Output, a.PartOut, a.PartMl, a.Counters, a.Rows, c.NumHeads,
            c.NumKvHeads, c.HeadDim, MaxBlocks, BlockTokens, ValueGroup, a.Plan, AttentionKernel, a.Batch, VidKvTables, prefetch, projection,
            tablesEarly: a.Batch && a.Appended && _encodeLayer == a.Layer);
        EnqueueStatistics(a);
        return projected;
    }

    /// <summary>
    /// Whether a decode row's RoPE and append run in the QKV product's epilogue (<see cref="EnqueueFusedQkv"/>): at batch 1
    /// (several sequences append through paged_rope_append, one launch for all of them), and not while attention
    /// statistics are collected (H2O's coverage is taken from the head lengths before the append in EnqueueAttention).
    /// </summary>
    internal bool FusesAppend => Batch == 1 && _statistics == null && !_coverEachForward && Config.HeadDim % 16 == 0;

    internal override bool EnqueueFusedQkv(CudaKernels kernels, in FusedQkv f)
    {
        if (f.Rows > 1) return EnqueueBatchFusedQkv(kernels, f);
        if (!FusesAppend) return false;
        var c = Config;
        _kernels.QkvRopeAppend(f.Weights.Type, f.Weights.Pointer, f.X, f.Norm, f.Eps, f.Weights.Cols, f.Q, f.InvFreq, f.Position, f.Interleaved,
            c.NumHeads, c.NumKvHeads, c.HeadDim, AppendTarget(f.Layer, f.Sequence), _arrivals.Pointer + (ulong)(HeadIndex(f.Layer, f.Sequence, 0) * sizeof(int)));
        return true;
    }

    /// <summary>
    /// The layer whose batch QKV product appended in its epilogue (<see cref="EnqueueBatchFusedQkv"/>) and whose
    /// attention-output launch is still to encode the residuals it filled (<see cref="EnqueueOutputProduct"/>); -1: none.
    /// </summary>
    private int _encodeLayer = -1;

    /// <summary>
    /// A batch step's QKV product with the append in its epilogue (<see cref="CudaPagedKernels.BatchQkvRopeAppend"/>), where
    /// the rows are the cache's sequences, no statistics are collected (as <see cref="FusesAppend"/>) and the kernels can
    /// fold the append into both products (<see cref="CudaPagedKernels.FoldsBatchAppend"/>).
    /// </summary>
    private bool EnqueueBatchFusedQkv(CudaKernels kernels, in FusedQkv f)
    {
        var c = Config;
        var target = AppendTarget(f.Layer);
        if (!f.Batch || f.Rows != Batch || f.Output is not { } output || _statistics != null || _coverEachForward
            || !_kernels.FoldsBatchAppend(kernels, f.Weights, output, f.Rows, c.HeadDim, target))
            return false;
        _kernels.BatchQkvRopeAppend(kernels, f.Weights, f.X, f.Norm, f.Eps, f.Rows, f.Q, f.InvFreq, f.Position, f.Interleaved, c.NumHeads, c.NumKvHeads,
            c.HeadDim, target);
        _encodeLayer = f.Layer;
        return true;
    }

    internal override bool EnqueueOutputProduct(CudaKernels kernels, int layer, DeviceMatrix w, ulong x, ulong y, int rows)
    {
        if (_encodeLayer != layer || rows != Batch) return false;
        _encodeLayer = -1;
        _kernels.ProjectEncode(kernels, w, x, y, rows, Config.NumKvHeads, Config.HeadDim, AppendTarget(layer));
        return true;
    }

    /// <summary>The kernels this cache runs.</summary>
    internal CudaPagedKernels PagedKernels => _kernels;

    /// <summary>Device address of the block pool.</summary>
    internal ulong PoolPointer => _pool.Pointer;

    /// <summary>Device addresses of one layer's descriptor table, head block counts and head token counts for <paramref name="sequence"/> (then the later sequences').</summary>
    internal (ulong Desc, ulong Blocks, ulong Tokens) LayerTables(int layer, int sequence = 0)
    {
        long head0 = HeadIndex(layer, sequence, 0);
        return (_desc.Pointer + (ulong)(head0 * MaxBlocks * DescriptorBytes), _headBlocks.Pointer + (ulong)(head0 * sizeof(int)),
            _headTokens.Pointer + (ulong)(head0 * sizeof(int)));
    }

    /// <summary>Where one layer's appended tokens of <paramref name="sequence"/> go (with a batch append, every sequence's from there).</summary>
    internal CudaPagedKernels.AppendTarget AppendTarget(int layer, int sequence = 0)
    {
        var (desc, blocks, tokens) = LayerTables(layer, sequence);
        long head0 = HeadIndex(layer, sequence, 0);
        return new CudaPagedKernels.AppendTarget(_pool.Pointer, desc, blocks, tokens, _state.Pointer, _state.Pointer + 4, PoolUnits,
            MaxBlocks, BlockTokens, ValueGroup, (int)KeyLayout.Format, (int)ValueLayout.Format,
            _arrivals.Pointer + (ulong)(head0 * sizeof(int)), _claims.Pointer + (ulong)(head0 * sizeof(ulong)));
    }

    internal override void CheckDeviceState()
    {
        var state = new int[2];
        _state.Download<int>(state);
        if (state[1] == 1) throw new KvSharpException($"the CUDA paged KV cache's pool of {PoolUnits * 16} bytes is full (pass a larger poolBytes)");
        if (state[1] == 2) throw new KvSharpException($"a head of the CUDA paged KV cache needs more than its {MaxBlocks} blocks (capacity {Capacity})");
        if (state[1] == 3) throw new KvSharpException("a head of the CUDA paged KV cache holds too many block format pairs to re-quantize (32 at most)");
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        KeepsPressBuffers = false;
        try
        {
            StopStatistics();
            StopRunningSums();
        }
        finally // a failed device wait (a sticky CUDA error) must not leak the pool
        {
            DisposeBuffers();
            base.Dispose();
        }
    }

    private void DisposeBuffers()
    {
        _pool?.Dispose();
        _desc?.Dispose();
        _headBlocks?.Dispose();
        _headTokens?.Dispose();
        _state?.Dispose();
        foreach (var b in new[] { _keptFlags, _keptFresh, _keptStaging }) b?.Dispose();
        _arrivals?.Dispose();
        _claims?.Dispose();
        _vidBasis?.Dispose();
    }

    /// <summary>Copies every head's blocks and tail (the stores of a CPU cache) into the pool and builds the tables.</summary>
    private void CopyFrom(HeadStore[] stores)
    {
        int t = BlockTokens, hd = Config.HeadDim;
        var (desc, blocks, tokens) = EmptyTables();
        var stager = new Stager(_pool, ReservedUnits);
        var f32 = LayoutOf(KvFormat.F32, true);
        for (int h = 0; h < stores.Length; h++)
        {
            var s = stores[h];
            int b = 0, start = 0;
            foreach (var e in s.Blocks)
            {
                if (e.KeyLayout != LayoutOf(e.KeyLayout.Format, true) || e.ValueLayout != LayoutOf(e.ValueLayout.Format, false))
                    throw new KvSharpException($"block layouts {e.KeyLayout} / {e.ValueLayout} are not the cache geometry the device reads");
                CheckRoom(h, b);
                long k = stager.Add(e.KeyBytes[..e.KeyLayout.ByteSize]);
                long v = stager.Add(e.ValueBytes[..e.ValueLayout.ByteSize]);
                SetDescriptor(desc, MaxBlocks, h, b++, (uint)k, (uint)v, Meta(e.Count, e.KeyLayout.Format, e.ValueLayout.Format), (uint)start);
                NoteFormats(e.KeyLayout.Format, e.ValueLayout.Format);
                start += e.Count;
            }
            var tailK = s.TailKeys;
            var tailV = s.TailValues;
            int full = s.TailCount / t;
            for (int i = 0; i < full; i++)
            {
                CheckRoom(h, b);
                long k = stager.Add(MemoryMarshal.AsBytes(tailK.Slice(i * t * hd, t * hd)));
                long v = stager.Add(MemoryMarshal.AsBytes(tailV.Slice(i * t * hd, t * hd)));
                SetDescriptor(desc, MaxBlocks, h, b++, (uint)k, (uint)v, Meta(t, f32.Format, f32.Format), (uint)start);
                start += t;
            }
            int rest = s.TailCount - full * t;
            CheckRoom(h, b);
            if (rest > 0)
            {
                _pool.Upload(tailK.Slice(full * t * hd, rest * hd), (long)ResidualKeys(h) * 16);
                _pool.Upload(tailV.Slice(full * t * hd, rest * hd), ((long)ResidualKeys(h) + _residualUnits) * 16);
            }
            SetDescriptor(desc, MaxBlocks, h, b++, ResidualKeys(h), ResidualKeys(h) + (uint)_residualUnits, Meta(rest, KvFormat.F32, KvFormat.F32), (uint)start);
            blocks[h] = b;
            tokens[h] = start + rest;
        }
        long top = stager.Finish();
        UploadTables(desc, blocks, tokens, top);
    }

    private void CheckRoom(int head, int block)
    {
        if (block >= MaxBlocks) throw new KvSharpException($"head {head} needs more than {MaxBlocks} blocks");
    }

    /// <summary>Host tables with every head empty: one residual descriptor of 0 tokens.</summary>
    private (uint[] Desc, int[] Blocks, int[] Tokens) EmptyTables()
    {
        var desc = new uint[(long)HeadCount * MaxBlocks * 4];
        var blocks = new int[HeadCount];
        for (int h = 0; h < HeadCount; h++)
        {
            SetDescriptor(desc, MaxBlocks, h, 0, ResidualKeys(h), ResidualKeys(h) + (uint)_residualUnits, Meta(0, KvFormat.F32, KvFormat.F32), 0);
            blocks[h] = 1;
        }
        return (desc, blocks, new int[HeadCount]);
    }

    private void UploadTables(uint[] desc, int[] blocks, int[] tokens, long top)
    {
        if (top > PoolUnits) throw new KvSharpException($"the CUDA paged KV cache's pool of {PoolUnits * 16} bytes cannot hold {top * 16} bytes of blocks");
        _desc.Upload<uint>(desc);
        _headBlocks.Upload<int>(blocks);
        _headTokens.Upload<int>(tokens);
        _state.Upload<int>([(int)(uint)top, 0, 0, 0]);
    }

    private (uint[] Desc, int[] Blocks, int[] Tokens) DownloadTables()
    {
        Device.Synchronize();
        var desc = new uint[(long)HeadCount * MaxBlocks * 4];
        _desc.Download<uint>(desc);
        var blocks = new int[HeadCount];
        _headBlocks.Download<int>(blocks);
        return (desc, blocks, HeadLengths());
    }

    /// <summary>
    /// Takes the longest head's block count, the mean over (layer, sequence) of its KV heads' summed block count and the
    /// shortest sequence (whose growth bounds every sequence's) as the base of attention plans (after an upload or an eviction).
    /// </summary>
    private void Resync()
    {
        var blocks = new int[HeadCount];
        _headBlocks.Download<int>(blocks);
        _blocksAtSync = blocks.Max();
        long tables = (long)Config.NumLayers * Batch;
        _layerBlocksAtSync = (blocks.Sum(b => (long)b) + tables - 1) / tables;
        _lengthAtSync = Enumerable.Range(0, Batch).Min(LengthOf);
    }

    private uint ResidualKeys(int head) => (uint)(head * 2 * _residualUnits);

    private BlockLayout LayoutOf(KvFormat format, bool keys) => format.IsVidKv() ? VidKvLayoutOf(format) : keys
        ? BlockLayout.ForKeys(format, Config.HeadDim, BlockTokens)
        : BlockLayout.ForValues(format, Config.HeadDim, BlockTokens, Options.ValueChannelGroup);

    private static int Units(int bytes) => (bytes + 15) / 16;

    private static uint Meta(int count, KvFormat keys, KvFormat values) => (uint)count | ((uint)keys << 16) | ((uint)values << 20);

    private static void SetDescriptor(uint[] desc, int maxBlocks, int head, int block, uint keys, uint values, uint meta, uint start)
    {
        long i = ((long)head * maxBlocks + block) * 4;
        desc[i] = keys; desc[i + 1] = values; desc[i + 2] = meta; desc[i + 3] = start;
    }

    private static (uint Keys, uint Values, int Count, KvFormat KeyFormat, KvFormat ValueFormat, int Start) Descriptor(uint[] desc, int head, int block, int maxBlocks)
    {
        long i = ((long)head * maxBlocks + block) * 4;
        uint meta = desc[i + 2];
        return (desc[i], desc[i + 1], (int)(meta & 0xffff), (KvFormat)((meta >> 16) & 0xf), (KvFormat)((meta >> 20) & 0xf), (int)desc[i + 3]);
    }

    private (uint Keys, uint Values, int Count, KvFormat KeyFormat, KvFormat ValueFormat, int Start) Descriptor(uint[] desc, int head, int block) =>
        Descriptor(desc, head, block, MaxBlocks);

    /// <summary>Collects blocks for consecutive pool slots from a start unit and uploads them in large pieces.</summary>
    private sealed class Stager(DeviceBuffer pool, long firstUnit)
    {
        private const int PieceBytes = 64 << 20;
        private readonly byte[] _piece = new byte[PieceBytes];
        private long _pieceUnit = firstUnit;
        private int _filled;

        /// <summary>Queues <paramref name="bytes"/> at the next 16-byte aligned slot; returns the slot's unit.</summary>
        public long Add(ReadOnlySpan<byte> bytes)
        {
            int size = Units(bytes.Length) * 16;
            if (_filled + size > PieceBytes) Flush();
            long unit = _pieceUnit + _filled / 16;
            bytes.CopyTo(_piece.AsSpan(_filled));
            _piece.AsSpan(_filled + bytes.Length, size - bytes.Length).Clear();
            _filled += size;
            return unit;
        }

        /// <summary>Uploads what is queued; returns the first unit past the last slot.</summary>
        public long Finish()
        {
            Flush();
            return _pieceUnit;
        }

        private void Flush()
        {
            if (_filled == 0) return;
            pool.Upload<byte>(_piece.AsSpan(0, _filled), _pieceUnit * 16);
            _pieceUnit += _filled / 16;
            _filled = 0;
        }
    }
}
