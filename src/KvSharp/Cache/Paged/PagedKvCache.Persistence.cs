using System.Runtime.InteropServices;
using System.Text;
using KvSharp.Cache.Blocks;
using KvSharp.Models;

namespace KvSharp.Cache.Paged;

/// <summary>Saving and loading a <see cref="PagedKvCache"/> (container: <see cref="PagedKvCacheFile"/>; layout: docs/kv-cache.md).</summary>
public sealed partial class PagedKvCache
{
    /// <summary>
    /// Writes the cache to <paramref name="path"/> atomically (a temporary file in the same folder replaces it once
    /// complete): shape, options, <paramref name="modelFingerprint"/>, per (layer, KV head) every block with its
    /// positions, layouts and raw bytes, and the float tail with its positions, and the cross-layer share map, under an XXH64 checksum.
    /// Blocks shared with forks are written as this cache's own (a loaded cache owns all its blocks).
    /// </summary>
    /// <param name="path">The file to write (replaced if it exists).</param>
    /// <param name="modelFingerprint">Identifies the model whose keys and values these are (<see cref="KvCacheFingerprint"/>); Load refuses other models.</param>
    /// <exception cref="KvSharpException">The file cannot be written.</exception>
    public void Save(string path, string modelFingerprint)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(modelFingerprint);
        ObjectDisposedException.ThrowIf(_disposed, this);
        PagedKvCacheFile.WriteAtomically(path, stream =>
        {
            using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
            var fingerprint = Encoding.UTF8.GetBytes(modelFingerprint);
            w.Write(fingerprint.Length); w.Write(fingerprint);
            foreach (int x in new[] { _layers, _heads, _kvHeads, _headDim }) w.Write(x);
            foreach (int x in new[] { (int)_options.KeyFormat, (int)_options.ValueFormat, _options.BlockTokens, _options.ValueChannelGroup, _options.ResidualTokens, _options.MaxTokens })
                w.Write(x);
            foreach (int x in _layerLength) w.Write(x);
            foreach (int x in _shareSource) w.Write(x);
            foreach (var store in _stores)
            {
                w.Write(store.Positions.Count);
                w.Write(store.Blocks.Count);
                foreach (var e in store.Blocks)
                {
                    w.Write(e.Count);
                    foreach (int p in e.Positions) w.Write(p);
                    WriteLayout(w, e.KeyLayout);
                    WriteLayout(w, e.ValueLayout);
                    w.Write(e.KeyBytes[..e.KeyLayout.ByteSize]);
                    w.Write(e.ValueBytes[..e.ValueLayout.ByteSize]);
                }
                w.Write(store.TailCount);
                foreach (int p in store.TailPositions) w.Write(p);
                w.Write(MemoryMarshal.AsBytes(store.TailKeys));
                w.Write(MemoryMarshal.AsBytes(store.TailValues));
                var balance = store.KeyBalance ?? [];
                w.Write(balance.Length);
                w.Write(MemoryMarshal.AsBytes(balance.AsSpan()));
            }
        });
    }

    /// <summary>
    /// Loads a cache saved by <see cref="Save"/>, checking it against the model it will run with: the file's
    /// fingerprint must equal <paramref name="modelFingerprint"/> and its shape <paramref name="config"/>'s.
    /// </summary>
    /// <inheritdoc cref="Load(string, string, int?)"/>
    public static PagedKvCache Load(string path, ModelConfig config, string modelFingerprint, int? maxTokens = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        return Load(path, modelFingerprint, maxTokens, (layers, heads, kvHeads, headDim) =>
        {
            if (layers != config.NumLayers || heads != config.NumHeads || kvHeads != config.NumKvHeads || headDim != config.HeadDim)
                throw new KvSharpException($"{path}: the KV cache's shape ({layers} layers, {heads} heads, {kvHeads} KV heads, head dimension {headDim}) does not match the model's ({config.NumLayers} layers, {config.NumHeads} heads, {config.NumKvHeads} KV heads, head dimension {config.HeadDim})");
        });
    }

    /// <summary>Loads a cache saved by <see cref="Save"/> whose fingerprint equals <paramref name="modelFingerprint"/>.</summary>
    /// <param name="path">The file.</param>
    /// <param name="modelFingerprint">The fingerprint of the model the cache will run with (<see cref="KvCacheFingerprint"/>).</param>
    /// <param name="maxTokens">The loaded cache's <see cref="PagedKvCacheOptions.MaxTokens"/> (default: the saved one); at least its length.</param>
    /// <returns>A cache owning fresh copies of all the saved blocks.</returns>
    /// <exception cref="KvSharpException">
    /// The file is missing, is not a KV cache file, has another version, is truncated or corrupt (checksum), was saved
    /// for another model or shape, or is malformed; the message names the file and the problem.
    /// </exception>
    public static PagedKvCache Load(string path, string modelFingerprint, int? maxTokens = null) => Load(path, modelFingerprint, maxTokens, null);

    /// <summary>
    /// The model fingerprint a cache file was saved for (after the same header and checksum checks as Load), so a
    /// tool can inspect a saved cache without its model: <c>Load(path, SavedFingerprint(path))</c>.
    /// </summary>
    /// <exception cref="KvSharpException">The file is missing, not a cache file, of another version, truncated or corrupt.</exception>
    public static string SavedFingerprint(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var payload = PagedKvCacheFile.OpenPayload(path);
        using var r = new BinaryReader(payload, Encoding.UTF8);
        try
        {
            int n = r.ReadInt32();
            if (n is < 0 or > 1 << 20) throw new KvSharpException($"{path}: malformed KV cache file (fingerprint of {n} bytes)");
            var bytes = r.ReadBytes(n);
            if (bytes.Length != n) throw new EndOfStreamException();
            return Encoding.UTF8.GetString(bytes);
        }
        catch (EndOfStreamException e)
        {
            throw new KvSharpException($"{path}: malformed KV cache file (its payload ends early)", e);
        }
    }

    private static PagedKvCache Load(string path, string modelFingerprint, int? maxTokens, Action<int, int, int, int>? checkShape)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(modelFingerprint);
        using var payload = PagedKvCacheFile.OpenPayload(path);
        using var r = new BinaryReader(new BufferedStream(payload, 1 << 16), Encoding.UTF8);
        PagedKvCache? cache = null;
        try
        {
            int fingerprintBytes = r.ReadInt32();
            Check(fingerprintBytes is >= 0 and <= 1 << 20, $"fingerprint of {fingerprintBytes} bytes");
            string saved = Encoding.UTF8.GetString(r.ReadBytes(fingerprintBytes));
            if (saved != modelFingerprint)
                throw new KvSharpException($"{path}: the KV cache was saved for model {saved}, this is model {modelFingerprint}");
            int layers = r.ReadInt32(), heads = r.ReadInt32(), kvHeads = r.ReadInt32(), headDim = r.ReadInt32();
            checkShape?.Invoke(layers, heads, kvHeads, headDim);
            Check(layers is >= 1 and <= 1 << 16 && kvHeads is >= 1 and <= 1 << 16, $"{layers} layers of {kvHeads} KV heads");
            var options = new PagedKvCacheOptions
            {
                KeyFormat = (KvFormat)r.ReadInt32(),
                ValueFormat = (KvFormat)r.ReadInt32(),
                BlockTokens = r.ReadInt32(),
                ValueChannelGroup = r.ReadInt32(),
                ResidualTokens = r.ReadInt32(),
                MaxTokens = r.ReadInt32(),
            };
            var layerLength = ReadInts(r, layers);
            var shareSource = ReadInts(r, layers);
            if (maxTokens is { } max)
            {
                if (max < layerLength.Max())
                    throw new KvSharpException($"{path}: the KV cache holds {layerLength.Max()} tokens, more than the {max} asked for");
                options = options with { MaxTokens = max };
            }
            try { cache = new PagedKvCache(layers, heads, kvHeads, headDim, options); }
            catch (KvSharpException e) { throw new KvSharpException($"{path}: malformed KV cache file ({e.Message})", e); }
            for (int l = 0; l < layers; l++)
            {
                Check(layerLength[l] >= 0 && layerLength[l] <= options.MaxTokens && (l == 0 || layerLength[l] <= layerLength[l - 1]), $"layer {l} length {layerLength[l]}");
                Check(shareSource[l] == -1 || (shareSource[l] >= 0 && shareSource[l] < l && shareSource[shareSource[l]] == -1), $"layer {l} share source {shareSource[l]}");
            }
            layerLength.CopyTo(cache._layerLength, 0);
            shareSource.CopyTo(cache._shareSource, 0);
            for (int i = 0; i < cache._stores.Length; i++)
                ReadStore(r, cache, i / kvHeads, i % kvHeads);
            Check(r.BaseStream.ReadByte() == -1, "bytes after the last head");
            return cache;
        }
        catch (EndOfStreamException e)
        {
            cache?.Dispose();
            throw new KvSharpException($"{path}: malformed KV cache file (its payload ends early)", e);
        }
        catch (Exception e) when (e is KvSharpException or ArgumentException)
        {
            cache?.Dispose();
            if (e is KvSharpException && e.Message.StartsWith(path, StringComparison.Ordinal)) throw;
            throw new KvSharpException($"{path}: malformed KV cache file ({e.Message})", e);
        }

        void Check(bool ok, string what)
        {
            if (!ok) throw new KvSharpException($"{path}: malformed KV cache file ({what})");
        }

        void ReadStore(BinaryReader r, PagedKvCache cache, int layer, int kvHead)
        {
            string where = $"layer {layer}, KV head {kvHead}";
            int d = cache._headDim, tokens = r.ReadInt32();
            Check(tokens >= 0 && tokens <= cache._layerLength[layer] && (tokens == 0 || cache._shareSource[layer] < 0), $"{where}: {tokens} tokens");
            var seen = new HashSet<int>();
            int[] Positions(int count, string of)
            {
                var positions = ReadInts(r, count);
                for (int t = 0; t < count; t++)
                    Check(positions[t] >= 0 && positions[t] < cache._layerLength[layer] && (t == 0 || positions[t] > positions[t - 1]) && seen.Add(positions[t]),
                        $"{where}, {of}: position {positions[t]} (positions ascend inside a block and the tail, below the layer's length, each stored once)");
                return positions;
            }
            int blockCount = r.ReadInt32();
            Check(blockCount >= 0 && blockCount <= tokens, $"{where}: {blockCount} blocks");
            var blocks = new List<(BlockFormats, int[], byte[], byte[])>(blockCount);
            int blocked = 0;
            for (int b = 0; b < blockCount; b++)
            {
                int count = r.ReadInt32();
                Check(count >= 1 && count <= cache._options.BlockTokens && blocked + count <= tokens, $"{where}, block {b}: {count} tokens");
                var positions = Positions(count, $"block {b}");
                var keyLayout = ReadLayout(r);
                var valueLayout = ReadLayout(r);
                var formats = cache._pools.Formats(keyLayout, valueLayout); // refuses other block geometries
                blocks.Add((formats, positions, r.ReadBytes(keyLayout.ByteSize), r.ReadBytes(valueLayout.ByteSize)));
                Check(blocks[^1].Item3.Length == keyLayout.ByteSize && blocks[^1].Item4.Length == valueLayout.ByteSize, $"{where}, block {b}: bytes missing");
                blocked += count;
            }
            int tail = r.ReadInt32();
            Check(tail >= 0 && blocked + tail == tokens, $"{where}: {blocked} block tokens + {tail} tail tokens for {tokens} positions");
            var tailPositions = Positions(tail, "tail");
            var tailKeys = new float[tail * d];
            var tailValues = new float[tail * d];
            r.BaseStream.ReadExactly(MemoryMarshal.AsBytes(tailKeys.AsSpan()));
            r.BaseStream.ReadExactly(MemoryMarshal.AsBytes(tailValues.AsSpan()));
            int balanceCount = r.ReadInt32();
            Check(balanceCount == 0 || balanceCount == d, $"{where}: key balance of {balanceCount} factors");
            var balance = balanceCount == 0 ? null : new float[d];
            if (balance != null)
            {
                r.BaseStream.ReadExactly(MemoryMarshal.AsBytes(balance.AsSpan()));
                foreach (float b in balance) Check(b > 0 && float.IsFinite(b) && MathF.ScaleB(1f, MathF.ILogB(b)) == b, $"{where}: key balance factor {b} (positive powers of two)");
            }
            Check(balance != null || !blocks.Exists(x => x.Item1.BalancedKeys), $"{where}: balanced key blocks without a key balance");
            cache._stores[layer * cache._kvHeads + kvHead].Restore(blocks, tailPositions, tailKeys, tailValues, balance);
        }
    }

    private static void WriteLayout(BinaryWriter w, BlockLayout layout)
    {
        w.Write((int)layout.Format); w.Write((int)layout.Axis); w.Write(layout.GroupSize); w.Write(layout.Tokens); w.Write(layout.HeadDim);
    }

    private static BlockLayout ReadLayout(BinaryReader r)
    {
        var format = (KvFormat)r.ReadInt32();
        var axis = (QuantAxis)r.ReadInt32();
        int group = r.ReadInt32(), tokens = r.ReadInt32(), headDim = r.ReadInt32();
        return new BlockLayout(format, axis, group, tokens, headDim); // validates (KvSharpException)
    }

    private static int[] ReadInts(BinaryReader r, int count)
    {
        var x = new int[count];
        r.BaseStream.ReadExactly(MemoryMarshal.AsBytes(x.AsSpan()));
        return x;
    }
}
