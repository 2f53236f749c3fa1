using System.Runtime.InteropServices;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// Reading the device cache back into a CPU <see cref="PagedKvCache"/> (what <c>kvsharp generate --device cuda --save-cache</c>
/// saves). The device's descriptors hold no positions, so the host keeps them: per head the positions of the tokens stored
/// before the last upload, eviction or re-quantization (the kernel's regrouping replayed on the host), in storage order; every head of a sequence stores each token appended since, at
/// the sequence's positions from then on.
/// </summary>
public sealed partial class CudaPagedKvCache
{
    private int[][]? _storedPositions; // per head: positions of the tokens stored at _storedUpTo, storage order; null = unknown
    private int[]? _storedUpTo;        // per sequence: its length when _storedPositions was taken

    /// <summary>
    /// A CPU cache holding sequence <paramref name="sequence"/>'s blocks as the device stores them, byte for byte (the
    /// residual's rows as the float tail), with their positions and this cache's options.
    /// </summary>
    /// <exception cref="KvSharpException">The positions of the stored tokens are not known: the cache was synthesized for a
    /// benchmark.</exception>
    public PagedKvCache Download(int sequence = 0)
    {
        if ((uint)sequence >= (uint)Batch) throw new KvSharpException($"sequence {sequence} is outside the cache's batch of {Batch}");
        if (_storedPositions == null || _storedUpTo == null)
            throw new KvSharpException("the CUDA paged KV cache cannot be read back: the positions of its tokens are not known in a synthesized cache");
        int hd = Config.HeadDim, length = LengthOf(sequence);
        var cpu = new PagedKvCache(Config, Options with { MaxTokens = Math.Max(Capacity, length) });
        try
        {
            for (int l = 0; l < Config.NumLayers; l++)
                for (int g = 0; g < Config.NumKvHeads; g++)
                {
                    var positions = PositionsOf(HeadIndex(l, sequence, g), sequence);
                    var head = ReadHead(l, g, sequence);
                    var blocks = new List<(BlockLayout, BlockLayout, int[], byte[], byte[])>(head.Count - 1);
                    int at = 0;
                    foreach (var b in head.Take(head.Count - 1))
                    {
                        blocks.Add((b.KeyLayout, b.ValueLayout, positions[at..(at + b.Count)], b.Keys, b.Values));
                        at += b.Count;
                    }
                    var residual = head[^1];
                    if (at + residual.Count != positions.Length)
                        throw new KvSharpException($"layer {l} KV head {g} of the CUDA paged KV cache stores {at + residual.Count} tokens, its positions say {positions.Length}");
                    cpu.RestoreHead(l, g, blocks, positions[at..],
                        MemoryMarshal.Cast<byte, float>(residual.Keys.AsSpan(0, residual.Count * hd * sizeof(float))),
                        MemoryMarshal.Cast<byte, float>(residual.Values.AsSpan(0, residual.Count * hd * sizeof(float))));
                }
            cpu.RestoreLength(length);
            return cpu;
        }
        catch
        {
            cpu.Dispose();
            throw;
        }
    }

    /// <summary>Positions of head <paramref name="head"/>'s stored tokens in storage order: those kept at the last upload or eviction, then every append since.</summary>
    private int[] PositionsOf(int head, int sequence)
    {
        int from = _storedUpTo![sequence];
        return [.. _storedPositions![head], .. Enumerable.Range(from, LengthOf(sequence) - from)];
    }

    /// <summary>Stored tokens of head <paramref name="head"/> by the host's positions (no read-back; known positions only).</summary>
    private int StoredCount(int head)
    {
        int sequence = head / Config.NumKvHeads % Batch;
        return _storedPositions![head].Length + LengthOf(sequence) - _storedUpTo![sequence];
    }

    /// <summary>Whether every head of sequence 0 stores each of its positions 0..Length-1, in that order (a fresh prefill: storage index = position).</summary>
    internal bool StoresEveryPositionInOrder()
    {
        if (_storedPositions == null || _storedUpTo == null) return false;
        var lengths = HeadLengths();
        for (int h = 0; h < HeadCount; h++)
        {
            if (h / Config.NumKvHeads % Batch != 0) continue;
            if (lengths[h] != Length) return false;
            var stored = _storedPositions[h];
            for (int i = 0; i < stored.Length; i++) if (stored[i] != i) return false;
            if (stored.Length != _storedUpTo[0]) return false;
        }
        return true;
    }

    /// <summary>Every head empty at length 0 (a new cache).</summary>
    private void StartPositions()
    {
        _storedPositions = Enumerable.Range(0, HeadCount).Select(_ => Array.Empty<int>()).ToArray();
        _storedUpTo = new int[Batch];
    }

    /// <summary>An uploaded cache's heads (<paramref name="stores"/> in table order) hold their CPU stores' tokens in storage order.</summary>
    private void StartPositions(HeadStore[] stores)
    {
        _storedPositions = stores.Select(s => s.StoragePositions()).ToArray();
        _storedUpTo = Enumerable.Range(0, Batch).Select(LengthOf).ToArray();
    }

    /// <summary>
    /// After an eviction by <paramref name="dropped"/> (head h's flags from h · <paramref name="stride"/>, nonzero = dropped):
    /// each head keeps the positions of its kept tokens.
    /// </summary>
    private void EvictPositions(byte[] dropped, int stride)
    {
        if (_storedPositions == null) return;
        for (int h = 0; h < HeadCount; h++)
        {
            var positions = PositionsOf(h, h / Config.NumKvHeads % Batch);
            var flags = dropped.AsSpan((int)((long)h * stride), positions.Length);
            var kept = new int[flags.Count((byte)0)];
            for (int i = 0, k = 0; i < positions.Length; i++)
                if (flags[i] == 0) kept[k++] = positions[i];
            _storedPositions[h] = kept;
        }
        _storedUpTo = Enumerable.Range(0, Batch).Select(LengthOf).ToArray();
    }

    /// <summary>
    /// Positions of head <paramref name="head"/>'s [<see cref="HeadIndex"/>] stored tokens in the device's storage order (the
    /// order of <see cref="Evict(IReadOnlyList{bool[]})"/>'s and <see cref="Requantize"/>'s flags).
    /// </summary>
    /// <exception cref="KvSharpException">The positions are not known (a synthesized cache).</exception>
    internal int[] StoredPositions(int head)
    {
        if (_storedPositions == null || _storedUpTo == null)
            throw new KvSharpException("the positions of the CUDA paged KV cache's tokens are not known (a synthesized cache)");
        return PositionsOf(head, head / Config.NumKvHeads % Batch);
    }

    /// <summary>Per head [<see cref="HeadIndex"/>], the token counts of its encoded blocks in storage order (the residual left out).</summary>
    internal int[][] BlockTokenCounts()
    {
        var (desc, blocks, _) = DownloadTables();
        return [.. Enumerable.Range(0, HeadCount).Select(h => Enumerable.Range(0, blocks[h] - 1).Select(b => Descriptor(desc, h, b, MaxBlocks).Count).ToArray())];
    }

    /// <summary>
    /// The positions every head stores after <c>paged_requantize</c> by <paramref name="flags"/> (host bytes [HeadCount,
    /// MaxBlocks · BlockTokens], nonzero = selected) into <paramref name="target"/> (key format | value format &lt;&lt; 4) over
    /// the tables <paramref name="desc"/> / <paramref name="blocks"/> taken before it: the kernel's regrouping replayed on the
    /// positions (blocks without a selected token or already in the target kept in order, then each format pair in order
    /// of first appearance with its tokens in storage order, selected residual rows joining the target's, then the
    /// residual's other rows). Null when the positions are not known.
    /// </summary>
    private int[][]? RequantizedPositions(byte[] flags, uint[] desc, int[] blocks, int target)
    {
        if (_storedPositions == null || _storedUpTo == null) return null;
        int maxTokens = MaxBlocks * BlockTokens;
        var result = new int[HeadCount][];
        for (int h = 0; h < HeadCount; h++)
        {
            var old = PositionsOf(h, h / Config.NumKvHeads % Batch);
            long at = (long)h * maxTokens;
            int nb = blocks[h];
            var parts = new (int Count, int Pair, int Start, int Class)[nb - 1];
            var pairs = new List<int>();
            void Add(int pair) { if (!pairs.Contains(pair)) pairs.Add(pair); }
            for (int b = 0; b < nb - 1; b++)
            {
                var (_, _, count, kf, vf, start) = Descriptor(desc, h, b, MaxBlocks);
                int own = (int)kf | (int)vf << 4;
                bool any = false;
                for (int t = 0; t < count; t++) any |= flags[at + start + t] != 0;
                int cls = any && own != target ? 1 : 0;
                parts[b] = (count, own, start, cls);
                if (cls == 1)
                    for (int t = 0; t < count; t++) Add(flags[at + start + t] != 0 ? target : own);
            }
            var (_, _, rc, _, _, rs) = Descriptor(desc, h, nb - 1, MaxBlocks);
            for (int t = 0; t < rc; t++) if (flags[at + rs + t] != 0) Add(target);
            for (int b = 0; b < parts.Length; b++)
                if (parts[b].Class == 0 && parts[b].Count != BlockTokens && pairs.Contains(parts[b].Pair)) parts[b].Class = 2;

            var order = new List<int>(old.Length);
            foreach (var p in parts)
                if (p.Class == 0) order.AddRange(old.AsSpan(p.Start, p.Count));
            foreach (int pair in pairs)
            {
                foreach (var p in parts)
                    if (p.Class != 0)
                        for (int t = 0; t < p.Count; t++)
                            if ((p.Class == 1 && flags[at + p.Start + t] != 0 ? target : p.Pair) == pair) order.Add(old[p.Start + t]);
                if (pair == target)
                    for (int t = 0; t < rc; t++) if (flags[at + rs + t] != 0) order.Add(old[rs + t]);
            }
            for (int t = 0; t < rc; t++) if (flags[at + rs + t] == 0) order.Add(old[rs + t]);
            result[h] = [.. order];
        }
        return result;
    }

    /// <summary>After a re-quantization: the heads' positions in their new storage order (null: unknown), as of now.</summary>
    private void SetPositions(int[][]? positions)
    {
        _storedPositions = positions;
        _storedUpTo = positions == null ? null : Enumerable.Range(0, Batch).Select(LengthOf).ToArray();
    }
}
