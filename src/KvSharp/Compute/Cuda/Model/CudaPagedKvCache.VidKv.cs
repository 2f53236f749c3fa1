using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// VidKV blocks in the device cache (docs/cuda.md): an uploaded CPU cache may hold <see cref="KvFormat.VidKvKey"/> key blocks
/// and <see cref="KvFormat.VidKvValue"/> value blocks (the vidkv press) among blocks of other formats. They are copied byte
/// for byte and read by the VidKV attention kernel (<see cref="PagedAttentionKernel.VidKv"/>), which the cache then uses for
/// every layer. <see cref="EncodeVidKv"/> encodes them on the device (the vidkv press: each head's oldest whole blocks
/// re-encoded in place, byte for byte as the CPU codec). What the device does not do with them is refused with a message
/// saying so: VidKV formats for a new cache's appends, eviction, re-quantization and attention statistics over a cache
/// holding them.
/// </summary>
public sealed partial class CudaPagedKvCache
{
    private int _vidOutliers = -1, _vidSalient = -1;
    private DeviceBuffer? _vidBasis;

    /// <summary>Whether the cache holds VidKV blocks (read only by <see cref="PagedAttentionKernel.VidKv"/>).</summary>
    public bool HoldsVidKv => _vidBasis != null;

    /// <summary>The VidKV kernel's extra arguments (no basis, no parameters for a cache without VidKV blocks).</summary>
    internal CudaPagedKernels.VidKvTables VidKvTables => _vidBasis is { } b ? new(b.Pointer, Math.Max(0, _vidOutliers), Math.Max(0, _vidSalient)) : default;

    /// <summary>
    /// Takes the VidKV parameters of the uploaded stores (one outlier count for all VidKV key blocks, one salient count for all
    /// VidKV value blocks: the kernel gets them as arguments, the descriptors have no room for them) and, when there are VidKV
    /// blocks, uploads the real-DFT bases of every length up to the block tokens and switches to the VidKV kernel.
    /// </summary>
    /// <exception cref="KvSharpException">VidKV blocks in the other role, or with different parameters within the cache.</exception>
    private void AdoptVidKv(HeadStore[] stores)
    {
        int kvHeads = Config.NumKvHeads;
        for (int h = 0; h < stores.Length; h++)
            foreach (var e in stores[h].Blocks)
            {
                // Stores are in table order ([layer, sequence, KV head], HeadIndex).
                string where = $"layer {h / (Batch * kvHeads)} sequence {h / kvHeads % Batch} KV head {h % kvHeads}";
                if (e.KeyLayout.Format == KvFormat.VidKvValue || e.ValueLayout.Format == KvFormat.VidKvKey)
                    throw new KvSharpException(VidKvRefusal($"{where} holds {e.KeyLayout.Format} keys / {e.ValueLayout.Format} values: the device reads VidKV keys and values only in their own roles"));
                if (e.KeyLayout.Format == KvFormat.VidKvKey) _vidOutliers = Same(_vidOutliers, e.KeyLayout.GroupSize, "outlier channels", where);
                if (e.ValueLayout.Format == KvFormat.VidKvValue) _vidSalient = Same(_vidSalient, e.ValueLayout.GroupSize, "salient tokens", where);
            }
        if (_vidOutliers >= 0 || _vidSalient >= 0) EnableVidKv();

        static int Same(int held, int value, string what, string where) => held < 0 || held == value ? value
            : throw new KvSharpException(VidKvRefusal($"{where} holds VidKV blocks with {value} {what}, others have {held}: the device reads one setting per cache"));
    }

    /// <summary>
    /// The vidkv press on the device (<c>VidKvPress.Compress</c>): per head, the oldest ⌊(n − <paramref name="residual"/>)/B⌋
    /// blocks of its n stored tokens (B = the block tokens) are decoded and re-encoded as VidKV blocks of
    /// <paramref name="keys"/> / <paramref name="values"/> (<c>VidKvPress.Layouts</c>) in place, by <c>VidKvCodec.Encode</c>'s
    /// arithmetic (float64 statistics, f16 parameters: the same bytes as the CPU encoder from the same decoded rows); the
    /// cache then attends through the VidKV kernel and appends in its own formats. Those blocks must be full blocks ahead of
    /// the residual (a fresh prefill's, or an uploaded CPU prefill's), each at least as large as its VidKV encoding (formats
    /// of 4 bits or more at the usual geometries). Returns the number of blocks encoded.
    /// </summary>
    /// <exception cref="KvSharpException">The cache already holds VidKV blocks, a block to encode is partial or smaller than its VidKV
    /// encoding, or the layouts do not fit the cache's geometry.</exception>
    /// <exception cref="InvalidOperationException">Statistics are being collected.</exception>
    public int EncodeVidKv(BlockLayout keys, BlockLayout values, int residual)
    {
        if (_statistics != null) throw new InvalidOperationException("cannot encode VidKV blocks while attention statistics are being collected");
        if (keys.Format != KvFormat.VidKvKey || values.Format != KvFormat.VidKvValue)
            throw new ArgumentException($"VidKV key and value layouts expected, got {keys.Format} / {values.Format}");
        if (keys.Tokens != BlockTokens || values.Tokens != BlockTokens || keys.HeadDim != Config.HeadDim || values.HeadDim != Config.HeadDim)
            throw new KvSharpException($"vidkv: layouts of {keys.Tokens} x {keys.HeadDim} for a cache of {BlockTokens}-token blocks of {Config.HeadDim} channels");
        ArgumentOutOfRangeException.ThrowIfNegative(residual);
        RefuseVidKv("encoding VidKV blocks again");
        int shared = CudaPagedKernels.VidKvEncodeSharedBytes(keys, values);
        if (shared > 200 * 1024) throw new KvSharpException($"vidkv on the GPU encodes a block in shared memory: {BlockTokens}-token blocks of {Config.HeadDim} channels need {shared} bytes, more than 200 KB");
        var (desc, blocks, tokens) = DownloadTables();
        var selected = new int[HeadCount];
        for (int h = 0; h < HeadCount; h++)
        {
            selected[h] = Math.Max(0, tokens[h] - residual) / BlockTokens;
            for (int b = 0; b < selected[h]; b++)
            {
                var e = Descriptor(desc, h, b);
                if (b >= blocks[h] - 1 || e.Count != BlockTokens)
                    throw new KvSharpException($"vidkv on the GPU encodes whole blocks ahead of the residual: head {h}'s block {b} holds {(b >= blocks[h] - 1 ? "the residual" : $"{e.Count} tokens")} (a freshly prefilled cache has full blocks; press it first)");
                int oldKeys = LayoutOf(e.KeyFormat, true).ByteSize, oldValues = LayoutOf(e.ValueFormat, false).ByteSize;
                if (oldKeys < keys.ByteSize || oldValues < values.ByteSize)
                    throw new KvSharpException($"vidkv on the GPU encodes blocks in place: a {e.KeyFormat} / {e.ValueFormat} block pair ({oldKeys} / {oldValues} bytes) is smaller than its VidKV encoding ({keys.ByteSize} / {values.ByteSize} bytes); use a cache of 4 bits or more");
            }
        }
        int most = selected.Max();
        if (most == 0) return 0;
        using var deviceSelected = Device.Allocate(HeadCount * sizeof(int));
        deviceSelected.Upload<int>(selected);
        var basis = RealFourierBasis.Double(BlockTokens);
        using var deviceBasis = Device.Allocate(basis.Length * sizeof(double));
        deviceBasis.Upload<double>(basis);
        _kernels.VidKvEncode(_pool.Pointer, _desc.Pointer, deviceSelected.Pointer, deviceBasis.Pointer, HeadCount, most, MaxBlocks, ValueGroup, keys, values);
        Device.Synchronize();
        _vidOutliers = keys.GroupSize;
        _vidSalient = values.GroupSize;
        NoteFormats(KvFormat.VidKvKey, KvFormat.VidKvValue);
        _layoutVersion++; // the blocks' bytes changed: older checkpoints are void
        EnableVidKv();
        Resync();
        return selected.Sum();
    }

    /// <summary>Uploads the real-DFT bases of every length up to the block tokens and switches to the VidKV kernel.</summary>
    private void EnableVidKv()
    {
        int t = BlockTokens;
        var tables = new float[(t * (t + 1) * (2 * t + 1)) / 6]; // Σ_{n=1..T} n², the bases back to back (vid_basis_at)
        for (int n = 1, at = 0; n <= t; at += n * n, n++) RealFourierBasis.Single(n).CopyTo(tables, at);
        _vidBasis = Device.Allocate(tables.Length * sizeof(float));
        _vidBasis.Upload<float>(tables);
        _attentionKernel = PagedAttentionKernel.VidKv;
    }

    /// <summary>
    /// A VidKV block pair that <see cref="Synthesize"/> copies into every block slot (decode benchmarks: attention reads the
    /// same bytes whatever they encode, but VidKV blocks must be well formed: masks, slots and parameters agree).
    /// </summary>
    internal sealed record VidKvTemplate(BlockLayout KeyLayout, BlockLayout ValueLayout, byte[] Keys, byte[] Values)
    {
        /// <summary>One block pair of random rows encoded by the CPU codec.</summary>
        public static VidKvTemplate Random(int headDim, int blockTokens, int outliers, int salient, int seed)
        {
            var rnd = new Random(seed);
            var rows = new float[blockTokens * headDim];
            var k = new BlockLayout(KvFormat.VidKvKey, QuantAxis.PerChannel, outliers, blockTokens, headDim);
            var v = new BlockLayout(KvFormat.VidKvValue, QuantAxis.PerChannel, salient, blockTokens, headDim);
            var keys = new byte[k.ByteSize];
            var values = new byte[v.ByteSize];
            for (int i = 0; i < rows.Length; i++) rows[i] = (float)(rnd.NextDouble() * 2 - 1);
            BlockCodec.Encode(k, rows, blockTokens, keys);
            for (int i = 0; i < rows.Length; i++) rows[i] = (float)(rnd.NextDouble() * 2 - 1);
            BlockCodec.Encode(v, rows, blockTokens, values);
            return new VidKvTemplate(k, v, keys, values);
        }
    }

    /// <summary>The layout of this cache's VidKV blocks of <paramref name="format"/> (its outlier or salient count, else the default).</summary>
    private BlockLayout VidKvLayoutOf(KvFormat format)
    {
        int held = format == KvFormat.VidKvKey ? _vidOutliers : _vidSalient;
        int parameter = held < 0 ? BlockLayout.VidKvDefaultParameter(format, Config.HeadDim, BlockTokens) : held;
        return new BlockLayout(format, QuantAxis.PerChannel, parameter, BlockTokens, Config.HeadDim);
    }

    /// <summary>Refuses <paramref name="operation"/> on a cache holding VidKV blocks (the device neither decodes them element by element nor encodes them).</summary>
    private void RefuseVidKv(string operation)
    {
        if (HoldsVidKv) throw new KvSharpException(VidKvRefusal($"{operation} of a cache holding VidKV blocks; attention over them is supported"));
    }
}
