using System.Runtime.InteropServices;
using static KvSharp.GpuTests.Checks.DeviceData;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// The device paged KV cache (<see cref="CudaPagedKvCache"/>) against independent references: its attention over every
/// block format and over mixed-format heads of different lengths against float64 attention over the CPU codec's decoded
/// K/V; its appends (device quantization) against the CPU cache's bytes; its evictions against the CPU cache's kept
/// tokens; the transformer over it against the CPU engine (VidKV blocks: <see cref="VidKvChecks"/>). Fresh random inputs
/// every run; outputs poisoned with NaN before each launch.
/// </summary>
public static class PagedChecks
{
    private static CudaDevice Dev => CudaDevice.Shared;

    /// <summary>The block formats the device cache encodes: all but VidKV's (read after an upload, see <see cref="VidKvChecks"/>).</summary>
    private static readonly KvFormat[] Supported = [.. Enum.GetValues<KvFormat>().Where(f => !f.IsVidKv())];

    /// <summary>The formats checked one by one; null stands for a mixed-format cache.</summary>
    private static readonly KvFormat?[] Cases = [.. Supported.Select(f => (KvFormat?)f), null];

    internal static ModelConfig Shape(int heads, int kvHeads, int hd) => new()
    {
        Architecture = "llama",
        VocabSize = 1000,
        HiddenSize = heads * hd,
        IntermediateSize = 512,
        NumLayers = 2,
        NumHeads = heads,
        NumKvHeads = kvHeads,
        HeadDim = hd,
    };

    private static string Name(KvFormat? f) => f?.ToString() ?? "mixed";

    /// <summary>
    /// The attention kernels that read <paramref name="cache"/>'s shape (a cache holding VidKV blocks: only the VidKV kernel;
    /// the others: every kernel whose shape rule admits it, the VidKV one reading their formats element by element).
    /// </summary>
    internal static IEnumerable<PagedAttentionKernel> Kernels(CudaPagedKvCache cache) => cache.HoldsVidKv ? [PagedAttentionKernel.VidKv] :
        Enum.GetValues<PagedAttentionKernel>().Where(k => k switch
        {
            PagedAttentionKernel.TensorCores => CudaPagedKernels.SupportsTensorCores(cache.Config.NumHeads / cache.Config.NumKvHeads, cache.Config.HeadDim, cache.ValueGroup),
            PagedAttentionKernel.Pipelined => CudaPagedKernels.SupportsPipelined(cache.Config.NumHeads / cache.Config.NumKvHeads, cache.Config.HeadDim, cache.ValueGroup, cache.BlockTokens),
            _ => true,
        });

    /// <summary>
    /// A plan of few blocks per split for <paramref name="kernel"/> over <paramref name="gpu"/>'s longest head (many chunks
    /// to merge), as long as the merge's weights (one per split) fit the scores area.
    /// </summary>
    internal static CudaKernels.AttentionPlan FewBlocksPlan(CudaPagedKvCache gpu, PagedAttentionKernel kernel)
    {
        int few = 1;
        while ((gpu.MaxBlocks + few - 1) / few > few * gpu.BlockTokens) few++;
        var c = gpu.Config;
        return new CudaKernels.AttentionPlan(few, (gpu.MaxBlocks + few - 1) / few,
            CudaPagedKernels.SharedBytes(c.NumHeads / c.NumKvHeads, c.HeadDim, gpu.BlockTokens, few, kernel));
    }

    /// <summary>
    /// A CPU cache of <paramref name="length"/> random tokens per layer in format <paramref name="f"/> (both K and V), or for a
    /// mixed case F16 blocks with tokens re-quantized to INT2/INT4, FP8/ternary, binary/INT8 and BF16/F32; then each head
    /// loses a random share of its tokens (per-head lengths, partial blocks) unless <paramref name="evict"/> is false.
    /// </summary>
    internal static PagedKvCache CpuCache(ModelConfig c, KvFormat? f, int length, RandomData rnd, bool evict)
    {
        var cache = new PagedKvCache(c, new PagedKvCacheOptions { KeyFormat = f ?? KvFormat.F16, ValueFormat = f ?? KvFormat.F16, MaxTokens = length + 64 });
        int row = c.NumKvHeads * c.HeadDim;
        for (int l = 0; l < c.NumLayers; l++)
        {
            // Keys with per-channel offsets (the outlier channels KIVI quantizes per channel), values plain.
            var keys = rnd.Floats(length * row, 2f);
            for (int i = 0; i < keys.Length; i++) keys[i] += (i % c.HeadDim) % 7 - 3;
            cache.Append(l, keys, rnd.Floats(length * row, 2f), length);
        }
        for (int l = 0; l < c.NumLayers; l++)
            for (int g = 0; g < c.NumKvHeads; g++)
            {
                if (f == null)
                {
                    foreach (var (kf, vf) in new[] { (KvFormat.Int2, KvFormat.Int4), (KvFormat.Fp8E4M3, KvFormat.Ternary), (KvFormat.Binary, KvFormat.Int8), (KvFormat.BF16, KvFormat.F32) })
                    {
                        int n = cache.Positions(l, g).Count;
                        var select = Enumerable.Range(0, n).Select(i => (i / 16 + rnd.Next(3)) % 4 == 0).ToArray();
                        cache.Requantize(l, g, select, kf, vf);
                    }
                }
                if (evict)
                {
                    int n = cache.Positions(l, g).Count;
                    double share = rnd.Next(60) / 100.0;
                    var drop = Enumerable.Range(0, n).Select(_ => rnd.Next(1000) < share * 1000).ToArray();
                    cache.Evict(l, g, drop);
                }
            }
        return cache;
    }

    /// <summary>
    /// Float64 attention of rows q [rows, heads, hd] over each KV head's decoded K/V rows in storage order
    /// (<paramref name="headRows"/>); row t sees all but the last rows-1-t stored tokens, as the device kernel does.
    /// </summary>
    internal static double[] Reference(Func<int, (float[] K, float[] V)> headRows, ModelConfig c, float[] q, int rows)
    {
        int heads = c.NumHeads, hd = c.HeadDim, group = heads / c.NumKvHeads;
        var expected = new double[rows * heads * hd];
        for (int g = 0; g < c.NumKvHeads; g++)
        {
            var (k, v) = headRows(g);
            int stored = k.Length / hd;
            for (int t = 0; t < rows; t++)
                for (int h = g * group; h < (g + 1) * group; h++)
                {
                    int visible = stored - (rows - 1 - t);
                    if (visible <= 0) continue; // no visible token: the kernel outputs zeros
                    ReferenceAttention.Head(q.AsSpan((t * heads + h) * hd, hd), visible, (j, d) => k[j * hd + d], (j, d) => v[j * hd + d],
                        expected.AsSpan((t * heads + h) * hd, hd));
                }
        }
        return expected;
    }

    /// <summary>
    /// The CPU codec's decoded K/V of one head in storage order (blocks in list order, then the tail: the order an upload
    /// copies and the device walks), which differs from ascending position once re-quantization has regrouped tokens.
    /// </summary>
    internal static (float[] K, float[] V) StorageRows(PagedKvCache cpu, int layer, int kvHead, int hd)
    {
        var (k, v) = cpu.Read(layer, kvHead);
        var logical = cpu.Positions(layer, kvHead).ToArray();
        var storage = cpu.ReadStore(layer, kvHead).StoragePositions();
        var sk = new float[k.Length];
        var sv = new float[v.Length];
        for (int s = 0; s < storage.Length; s++)
        {
            int i = Array.BinarySearch(logical, storage[s]);
            Array.Copy(k, i * hd, sk, s * hd, hd);
            Array.Copy(v, i * hd, sv, s * hd, hd);
        }
        return (sk, sv);
    }

    /// <summary>A device head's blocks decoded by the CPU codec (residual rows as stored), in storage order, with each row's formats.</summary>
    internal static (float[] K, float[] V, (KvFormat Key, KvFormat Value)[] Formats) DecodeDeviceHead(IReadOnlyList<CudaPagedKvCache.DeviceBlock> head, int hd)
    {
        int n = head.Sum(b => b.Count);
        var k = new float[n * hd];
        var v = new float[n * hd];
        var formats = new (KvFormat, KvFormat)[n];
        int row = 0;
        foreach (var b in head)
        {
            if (b.Start != row) throw new CheckFailedException($"device block at {b.Start}, expected {row}");
            BlockCodec.Decode(b.KeyLayout, b.Keys, b.Count, k.AsSpan(row * hd, b.Count * hd));
            BlockCodec.Decode(b.ValueLayout, b.Values, b.Count, v.AsSpan(row * hd, b.Count * hd));
            for (int t = 0; t < b.Count; t++) formats[row + t] = (b.KeyLayout.Format, b.ValueLayout.Format);
            row += b.Count;
        }
        return (k, v, formats);
    }

    /// <summary>
    /// Key norms on the device (key-norm's scores) = the float64 norms of the device's stored keys as the CPU codec decodes
    /// them (<see cref="KeyCaches"/>).
    /// </summary>
    public static string KeyNormsMatchCpu()
    {
        double worst = 0;
        int rows = 0;
        foreach (var (name, gpu, keys, hd) in KeyCaches())
        {
            var norms = gpu.KeyNorms();
            for (int h = 0; h < keys.Length; h++)
            {
                string what = $"key norms {name} head {h}";
                var got = norms[h];
                if (got.Length * hd != keys[h].Length) throw new CheckFailedException($"{what}: {got.Length} norms, the head stores {keys[h].Length / hd} tokens");
                for (int t = 0; t < got.Length; t++)
                {
                    double sum = 0;
                    for (int d = 0; d < hd; d++) sum += (double)keys[h][t * hd + d] * keys[h][t * hd + d];
                    double expected = Math.Sqrt(sum), error = Math.Abs(got[t] - expected) / Math.Max(expected, 1e-6);
                    if (!(error <= 1e-5)) throw new CheckFailedException($"{what}: token {t}'s norm is {got[t]}, expected {expected:G9}");
                    worst = Math.Max(worst, error);
                    rows++;
                }
            }
        }
        return $"{rows} stored keys, {Cases.Length} format cases at hd 128 and 64, worst relative error {worst:E1}";
    }

    /// <summary>
    /// R-KV's raw redundancy on the device = a float64 reference over the device's stored keys as the CPU codec decodes
    /// them (<see cref="KeyCaches"/>): for each key the sum of its cosine similarities above the threshold with the later
    /// keys, over n − 1. A pair within 1e-5 of the threshold may count or not (float32 dots on the device), so the device's
    /// value must lie between the sums without and with those pairs. Thresholds that count every pair (−2), about a third
    /// (0.05) and few (0.5).
    /// </summary>
    public static string KeyRedundancyMatchesCpu()
    {
        double worst = 0;
        int rows = 0;
        foreach (var (name, gpu, keys, hd) in KeyCaches())
        {
            var unit = keys.Select(k => UnitRows(k, hd)).ToArray();
            foreach (double threshold in new[] { -2.0, 0.05, 0.5 })
            {
                var raw = gpu.KeyRedundancy(threshold);
                for (int h = 0; h < keys.Length; h++)
                {
                    string what = $"R-KV redundancy {name} threshold {threshold} head {h}";
                    int n = keys[h].Length / hd;
                    var got = raw[h];
                    if (got.Length != n) throw new CheckFailedException($"{what}: {got.Length} values, the head stores {n} tokens");
                    for (int j = 0; j < n; j++)
                    {
                        double certain = 0, possible = 0;
                        for (int i = j + 1; i < n; i++)
                        {
                            double cos = 0;
                            for (int d = 0; d < hd; d++) cos += unit[h][i * hd + d] * unit[h][j * hd + d];
                            if (cos > threshold + 1e-5) certain += cos;
                            if (cos > threshold - 1e-5) possible += cos;
                        }
                        double low = n > 1 ? Math.Min(certain, possible) / (n - 1) : 0, high = n > 1 ? Math.Max(certain, possible) / (n - 1) : 0;
                        double error = Math.Max(0, Math.Max(low - got[j], got[j] - high));
                        if (!(error <= 1e-5 + 1e-5 * Math.Abs(high)))
                            throw new CheckFailedException($"{what}: token {j}'s raw redundancy is {got[j]}, expected {low:G9} .. {high:G9}");
                        worst = Math.Max(worst, error);
                        rows++;
                    }
                }
            }
        }
        return $"{rows} stored keys x threshold, {Cases.Length} format cases at hd 128 and 64, worst error outside the near-threshold bounds {worst:E1}";
    }

    /// <summary>
    /// For each block format and a mixed-format cache at head dims 128 and 64: a cache of 60-260 random tokens a head, each
    /// head then losing a random share (unequal lengths, partial blocks, the float32 residual), uploaded; with every head's
    /// stored keys [<see cref="CudaPagedKvCache.HeadIndex"/>] as the CPU codec decodes the device's blocks. The cache is
    /// disposed when the caller moves on.
    /// </summary>
    private static IEnumerable<(string Name, CudaPagedKvCache Gpu, float[][] Keys, int HeadDim)> KeyCaches()
    {
        foreach (int hd in new[] { 128, 64 })
            foreach (var f in Cases)
            {
                var rnd = new RandomData();
                var c = Shape(8, 4, hd);
                int length = 60 + rnd.Next(200);
                using var cpu = CpuCache(c, f, length, rnd, evict: true);
                using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, length + 8);
                var keys = new float[c.NumLayers * c.NumKvHeads][];
                for (int l = 0; l < c.NumLayers; l++)
                    for (int g = 0; g < c.NumKvHeads; g++) keys[gpu.HeadIndex(l, 0, g)] = DecodeDeviceHead(gpu.ReadHead(l, g), hd).K;
                yield return ($"{Name(f)} hd{hd} (seed {rnd.Seed})", gpu, keys, hd);
            }
    }

    /// <summary>The [n, hd] rows divided by their float64 norms (a zero row stays zero).</summary>
    private static double[] UnitRows(float[] rows, int hd)
    {
        var unit = new double[rows.Length];
        for (int t = 0; t < rows.Length / hd; t++)
        {
            double norm = 0;
            for (int d = 0; d < hd; d++) norm += (double)rows[t * hd + d] * rows[t * hd + d];
            norm = Math.Sqrt(norm);
            for (int d = 0; d < hd; d++) unit[t * hd + d] = norm > 0 ? rows[t * hd + d] / norm : 0;
        }
        return unit;
    }

    /// <summary>
    /// Decode attention over every block format and a mixed-format cache, GQA groups 1/2/3/4/8, head dims 64/128, heads of
    /// different lengths, 1 and 3 query rows (causal), the planned split and one block per split (many chunks to merge).
    /// </summary>
    public static string Attention()
    {
        var report = new List<string>();
        double worst = 0;
        foreach (var (heads, kvHeads, hd) in new[] { (16, 4, 128), (8, 8, 64), (16, 2, 128), (8, 4, 64), (6, 2, 64), (12, 4, 128) })
            foreach (var f in Cases)
            {
                var rnd = new RandomData();
                var c = Shape(heads, kvHeads, hd);
                int length = 100 + rnd.Next(100);
                using var cpu = CpuCache(c, f, length, rnd, evict: true);
                using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, length + 8);
                var k = gpu.PagedKernels;
                const int layer = 1;
                var (desc, blocks, tokens) = gpu.LayerTables(layer);
                foreach (int rows in new[] { 1, 3 })
                {
                    var q = rnd.Floats(rows * heads * hd, 2f);
                    var expected = Reference(g => StorageRows(cpu, layer, g, hd), c, q, rows);
                    using var dq = Upload(q);
                    foreach (var kernel in Kernels(gpu))
                    {
                        gpu.AttentionKernel = kernel;
                        var planned = gpu.PlanAttention(null!, length, rows);
                        foreach (var plan in new[] { planned, FewBlocksPlan(gpu, kernel) })
                        {
                            using var po = Poisoned((long)rows * heads * plan.Splits * hd * 4);
                            using var pml = Poisoned((long)rows * heads * plan.Splits * 8);
                            using var counters = Dev.Allocate(rows * kvHeads * 4L);
                            counters.Fill32(0);
                            // The second launch shows the counters were left at zero; it also asks L2 for two ranges (the pool and
                            // the queries): a hint, which must not change the result.
                            for (int launch = 0; launch < 2; launch++)
                            {
                                using var dout = Poisoned((long)rows * heads * hd * 4);
                                var prefetch = launch == 1 ? new L2Prefetch(gpu.PoolPointer, gpu.PoolUnits * 16, dq.Pointer, dq.ByteLength) : default;
                                k.Attention(dq.Pointer, gpu.PoolPointer, desc, blocks, tokens, dout.Pointer, po.Pointer, pml.Pointer, counters.Pointer,
                                    rows, heads, kvHeads, hd, gpu.MaxBlocks, gpu.BlockTokens, gpu.ValueGroup, plan, kernel, vid: gpu.VidKvTables, prefetch: prefetch);
                                var got = Result(dout, rows * heads * hd);
                                string what = $"paged attention ({kernel}){(launch == 1 ? " + L2 prefetch" : "")} {Name(f)} H{heads}/KV{kvHeads} hd{hd} len{length} rows{rows} splits{plan.Splits} (seed {rnd.Seed})";
                                Compare.Relative(what, got, expected, 1e-4);
                                worst = Math.Max(worst, Compare.RelativeError(got, expected));
                            }
                        }
                    }
                }
                report.Add($"{Name(f)}/hd{hd}/G{heads / kvHeads}");
            }
        return $"{report.Count} caches (every format and mixed, groups 1/2/3/4/8, hd 64/128, rows 1 and 3, two splits each, every kernel that reads the shape: lane channels, wide, VidKV's element path, tensor cores and pipelined tensor cores at hd 128), worst rel err {worst:E2}";
    }

    /// <summary>
    /// Appends through the device's RoPE + append kernel (zero RoPE frequencies: rotation by 0 keeps the rows exact) in one
    /// 40-row call and then one row at a time: the blocks the device encodes when a residual fills are byte for byte the
    /// CPU cache's for the same rows, and the residual holds the CPU's float tail. Besides uniform random rows, rows on a
    /// grid of halves (0 to 15 in steps of 0.5 plus an integer offset per channel): their groups often get a range of
    /// exactly 15, so scales of 1 (INT4) or 5 (INT2) make many quotients exact half-integers, the ties a code must round
    /// to even as BlockCodec does.
    /// </summary>
    public static string AppendMatchesCpuCodec()
    {
        int checkedBlocks = 0;
        foreach (var (hd, halves) in new[] { (128, false), (64, false), (128, true) })
            foreach (var f in Supported)
            {
                var rnd = new RandomData();
                var c = Shape(8, 2, hd);
                int heads = c.NumHeads, kvHeads = c.NumKvHeads, total = 40 + 37, qkvRow = (heads + 2 * kvHeads) * hd;
                var options = new PagedKvCacheOptions { KeyFormat = f, ValueFormat = f, MaxTokens = 128 };
                using var cpu = new PagedKvCache(c, options);
                using var gpu = new CudaPagedKvCache(Dev, c, options, 128);
                using var invFreq = Upload(new float[hd / 2]);
                string data = halves ? "halves" : "random";
                for (int layer = 0; layer < c.NumLayers; layer++)
                {
                    var qkv = rnd.Floats(total * qkvRow, 3f);
                    for (int i = 0; i < qkv.Length; i++) qkv[i] = (halves ? 0.5f * rnd.Next(31) : qkv[i]) + (i % hd) % 5 - 2;
                    var keys = new float[total * kvHeads * hd];
                    var values = new float[total * kvHeads * hd];
                    for (int t = 0; t < total; t++)
                    {
                        Array.Copy(qkv, t * qkvRow + heads * hd, keys, t * kvHeads * hd, kvHeads * hd);
                        Array.Copy(qkv, t * qkvRow + (heads + kvHeads) * hd, values, t * kvHeads * hd, kvHeads * hd);
                    }
                    cpu.Append(layer, keys, values, total);
                    using var dqkv = Upload(qkv);
                    using var qOut = Poisoned((long)total * heads * hd * 4);
                    int done = 0;
                    foreach (int rows in new[] { 40 }.Concat(Enumerable.Repeat(1, 37)))
                    {
                        gpu.Position.Upload<int>([done]);
                        gpu.PagedKernels.RopeAppend(dqkv.Pointer + (ulong)(done * qkvRow * 4), qOut.Pointer + (ulong)(done * heads * hd * 4), 0, 0, invFreq.Pointer,
                            gpu.AppendTarget(layer), rows, heads, kvHeads, hd, gpu.Position.Pointer, false, 1e-6f);
                        done += rows;
                    }
                    Dev.Synchronize();
                    gpu.CheckDeviceState();
                    var q = Result(qOut, total * heads * hd);
                    for (int t = 0; t < total; t++)
                        for (int i = 0; i < heads * hd; i++)
                            if (q[t * heads * hd + i] != qkv[t * qkvRow + i])
                                throw new CheckFailedException($"append {f} hd{hd} {data}: query {t}/{i} is {q[t * heads * hd + i]}, expected {qkv[t * qkvRow + i]} (seed {rnd.Seed})");
                }
                for (int layer = 0; layer < c.NumLayers; layer++)
                    for (int g = 0; g < kvHeads; g++)
                        checkedBlocks += SameHead($"append {f} hd{hd} {data} layer {layer} head {g} (seed {rnd.Seed})", cpu.ReadStore(layer, g), gpu.ReadHead(layer, g), hd);
            }
        return $"{checkedBlocks} device-encoded block pairs equal the CPU codec's bytes (every supported format, hd 128 and 64, random rows and rows on a grid of halves)";
    }

    /// <summary>
    /// The batch append (<see cref="CudaPagedKernels.RopeAppend"/> with batch: each launch one new token of every sequence)
    /// against the CPU codec: three sequences prefilled to 0, 11 and 29 tokens (their residuals fill at different steps)
    /// append 70 tokens each, and every head's blocks must equal the CPU cache's bytes: every supported format at hd 128
    /// (value groups of 32), mixed INT key and value formats, hd 64 with value groups of 16 (a quarter of a row is one INT2
    /// word) and with 16-token blocks, and an INT shape the split kernel refuses (hd 64, value groups of 32). Each case states
    /// whether it takes <c>paged_rope_append_split</c> (four blocks a head, a quarter of the channels each; the check fails
    /// if <see cref="CudaPagedKernels.SplitsAppend"/> disagrees), and with <see cref="CudaPagedKernels.SplitBatchEncode"/>
    /// off the same appends go through paged_rope_append's one block a head. RoPE is the identity (zero frequencies), so the
    /// CPU cache gets the rows as they are (<see cref="BatchAppendSplitMatchesOneBlock"/> rotates).
    /// </summary>
    public static string BatchAppendMatchesCpuCodec()
    {
        int checkedBlocks = 0, splitCases = 0;
        const int batch = 3, steps = 70;
        int[] prefill = [0, 11, 29];
        var cases = Supported.Select(f => (Hd: 128, Vg: 32, Tokens: 32, Kf: f, Vf: f, Splits: f is KvFormat.Int8 or KvFormat.Int4 or KvFormat.Int2))
            .Concat([(128, 32, 32, KvFormat.Int4, KvFormat.Int2, true), (128, 32, 32, KvFormat.Int2, KvFormat.Int8, true),
                (64, 16, 32, KvFormat.Int2, KvFormat.Int4, true), (64, 16, 16, KvFormat.Int8, KvFormat.Int2, true),
                (64, 32, 32, KvFormat.Int4, KvFormat.Int4, false)]).ToArray();
        var kernels = CudaPagedKernels.For(Dev);
        bool wasSplit = kernels.SplitBatchEncode;
        try
        {
            foreach (bool split in new[] { true, false })
                foreach (var (hd, vg, blockTokens, kf, vf, splits) in cases)
                {
                    kernels.SplitBatchEncode = split;
                    string name = $"batch append {kf}/{vf} hd{hd} vg{vg} x{blockTokens} ({(split && splits ? "split" : "one block a head")})";
                    var rnd = new RandomData();
                    var c = Shape(8, 2, hd);
                    int heads = c.NumHeads, kvHeads = c.NumKvHeads, qkvRow = (heads + 2 * kvHeads) * hd;
                    var options = new PagedKvCacheOptions { KeyFormat = kf, ValueFormat = vf, ValueChannelGroup = vg, BlockTokens = blockTokens, MaxTokens = 128 };
                    var cpu = Enumerable.Range(0, batch).Select(_ => new PagedKvCache(c, options)).ToArray();
                    try
                    {
                        using var gpu = new CudaPagedKvCache(Dev, c, options, 128, batch: batch);
                        using var invFreq = Upload(new float[hd / 2]);
                        if (kernels.SplitsAppend(gpu.AppendTarget(0), hd) != (split && splits))
                            throw new CheckFailedException($"{name}: the split kernel {(split && splits ? "is not" : "is")} taken");
                        splitCases += split && splits ? 1 : 0;
                        // One row's keys and values (kvHeads · hd each) from a QKV row.
                        (float[] K, float[] V) KeysValues(float[] qkv, int row) =>
                            (qkv[(row * qkvRow + heads * hd)..(row * qkvRow + (heads + kvHeads) * hd)],
                             qkv[(row * qkvRow + (heads + kvHeads) * hd)..((row + 1) * qkvRow)]);
                        for (int layer = 0; layer < c.NumLayers; layer++)
                        {
                            for (int s = 0; s < batch; s++)
                            {
                                if (prefill[s] == 0) continue;
                                var qkv = rnd.Floats(prefill[s] * qkvRow, 3f);
                                using var dqkv = Upload(qkv);
                                using var qOut = Poisoned((long)prefill[s] * heads * hd * 4);
                                gpu.Position.Upload<int>([0]);
                                kernels.RopeAppend(dqkv.Pointer, qOut.Pointer, 0, 0, invFreq.Pointer, gpu.AppendTarget(layer, s), prefill[s], heads, kvHeads, hd,
                                    gpu.Position.Pointer, false, 1e-6f);
                                Dev.Synchronize();
                                for (int t = 0; t < prefill[s]; t++)
                                {
                                    var (k, v) = KeysValues(qkv, t);
                                    cpu[s].Append(layer, k, v, 1);
                                }
                            }
                            for (int step = 0; step < steps; step++)
                            {
                                var qkv = rnd.Floats(batch * qkvRow, 3f);
                                using var dqkv = Upload(qkv);
                                using var qOut = Poisoned((long)batch * heads * hd * 4);
                                gpu.Position.Upload<int>([.. prefill.Select(p => p + step)]);
                                kernels.RopeAppend(dqkv.Pointer, qOut.Pointer, 0, 0, invFreq.Pointer, gpu.AppendTarget(layer), batch, heads, kvHeads, hd,
                                    gpu.Position.Pointer, false, 1e-6f, batch: true);
                                for (int s = 0; s < batch; s++)
                                {
                                    var (k, v) = KeysValues(qkv, s);
                                    cpu[s].Append(layer, k, v, 1);
                                }
                                var q = Result(qOut, batch * heads * hd);
                                for (int s = 0; s < batch; s++)
                                    for (int i = 0; i < heads * hd; i++)
                                        if (q[s * heads * hd + i] != qkv[s * qkvRow + i])
                                            throw new CheckFailedException($"{name}: sequence {s} query {i} is {q[s * heads * hd + i]}, expected {qkv[s * qkvRow + i]} (seed {rnd.Seed})");
                            }
                        }
                        gpu.CheckDeviceState();
                        for (int layer = 0; layer < c.NumLayers; layer++)
                            for (int s = 0; s < batch; s++)
                                for (int g = 0; g < kvHeads; g++)
                                    checkedBlocks += SameHead($"{name} layer {layer} sequence {s} head {g} (seed {rnd.Seed})",
                                        cpu[s].ReadStore(layer, g), gpu.ReadHead(layer, g, s), hd);
                    }
                    finally
                    {
                        foreach (var x in cpu) x.Dispose();
                    }
                }
        }
        finally
        {
            kernels.SplitBatchEncode = wasSplit;
        }
        return $"{checkedBlocks} block pairs of 3 sequences appended a token a launch equal the CPU codec's bytes ({cases.Length} cases: every supported format, "
            + $"mixed INT formats, hd 64 with value groups of 16 and 16-token blocks; {splitCases} through the split kernel, every case also through one block a head)";
    }

    /// <summary>
    /// <c>paged_rope_append_split</c> against paged_rope_append's one block a head (<see cref="BatchAppendMatchesCpuCodec"/>
    /// checks that one against the CPU codec) with what that check leaves out: RoPE at real frequencies in both layouts and q/k
    /// RMSNorm weights. Three sequences (prefilled to 0, 11 and 29 tokens through the one-row append) append 70 tokens a launch
    /// into two caches of INT4 keys and INT2 values, one per kernel, from the same rows; the queries of every launch and every
    /// head's blocks (formats, counts, first tokens, bytes) and residual rows must be identical.
    /// </summary>
    public static string BatchAppendSplitMatchesOneBlock()
    {
        const int hd = 128, batch = 3, steps = 70;
        int[] prefill = [0, 11, 29];
        var kernels = CudaPagedKernels.For(Dev);
        bool wasSplit = kernels.SplitBatchEncode;
        var rnd = new RandomData();
        var c = Shape(8, 2, hd);
        int heads = c.NumHeads, kvHeads = c.NumKvHeads, qkvRow = (heads + 2 * kvHeads) * hd, compared = 0;
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.Int4, ValueFormat = KvFormat.Int2, MaxTokens = 128 };
        using var invFreq = Upload(Enumerable.Range(0, hd / 2).Select(i => MathF.Pow(10000f, -2f * i / hd)).ToArray());
        using var qNorm = Upload(rnd.Floats(hd, 2f));
        using var kNorm = Upload(rnd.Floats(hd, 2f));
        try
        {
            foreach (bool interleaved in new[] { false, true })
            {
                string what = $"split batch append, {(interleaved ? "interleaved" : "half-split")} RoPE with q/k norms (seed {rnd.Seed})";
                var prefillRows = prefill.Select(n => rnd.Floats(n * qkvRow, 3f)).ToArray();
                var stepRows = Enumerable.Range(0, steps).Select(_ => rnd.Floats(batch * qkvRow, 3f)).ToArray();
                var runs = new List<(float[] Queries, List<IReadOnlyList<CudaPagedKvCache.DeviceBlock>> Heads)>();
                foreach (bool split in new[] { true, false })
                {
                    kernels.SplitBatchEncode = split;
                    using var gpu = new CudaPagedKvCache(Dev, c, options, 128, batch: batch);
                    if (kernels.SplitsAppend(gpu.AppendTarget(0), hd) != split)
                        throw new CheckFailedException($"{what}: the split kernel {(split ? "is not" : "is")} taken");
                    var queries = new float[steps * batch * heads * hd];
                    for (int s = 0; s < batch; s++)
                    {
                        if (prefill[s] == 0) continue;
                        using var dqkv = Upload(prefillRows[s]);
                        using var qOut = Poisoned((long)prefill[s] * heads * hd * 4);
                        gpu.Position.Upload<int>([0]);
                        kernels.RopeAppend(dqkv.Pointer, qOut.Pointer, qNorm.Pointer, kNorm.Pointer, invFreq.Pointer, gpu.AppendTarget(0, s), prefill[s], heads, kvHeads, hd,
                            gpu.Position.Pointer, interleaved, 1e-6f);
                        Dev.Synchronize();
                    }
                    for (int step = 0; step < steps; step++)
                    {
                        using var dqkv = Upload(stepRows[step]);
                        using var qOut = Poisoned((long)batch * heads * hd * 4);
                        gpu.Position.Upload<int>([.. prefill.Select(p => p + step)]);
                        kernels.RopeAppend(dqkv.Pointer, qOut.Pointer, qNorm.Pointer, kNorm.Pointer, invFreq.Pointer, gpu.AppendTarget(0), batch, heads, kvHeads, hd,
                            gpu.Position.Pointer, interleaved, 1e-6f, batch: true);
                        Result(qOut, batch * heads * hd).CopyTo(queries, step * batch * heads * hd);
                    }
                    gpu.CheckDeviceState();
                    var headsRead = new List<IReadOnlyList<CudaPagedKvCache.DeviceBlock>>();
                    for (int s = 0; s < batch; s++)
                        for (int g = 0; g < kvHeads; g++) headsRead.Add(gpu.ReadHead(0, g, s));
                    runs.Add((queries, headsRead));
                }
                var (a, b) = (runs[0], runs[1]);
                FirstDifference($"{what}: queries", MemoryMarshal.AsBytes(a.Queries.AsSpan()), MemoryMarshal.AsBytes(b.Queries.AsSpan()));
                for (int h = 0; h < a.Heads.Count; h++)
                {
                    SameDeviceHead($"{what} sequence {h / kvHeads} head {h % kvHeads}", a.Heads[h], b.Heads[h], hd, "one block a head");
                    compared += a.Heads[h].Count;
                }
            }
        }
        finally
        {
            kernels.SplitBatchEncode = wasSplit;
        }
        return $"{compared} block pairs (residuals included) and the queries of 140 launches identical through the split kernel and one block a head (INT4 keys, INT2 values, both RoPE layouts, q/k norms; seed {rnd.Seed})";
    }

    /// <summary>
    /// The split batch append's error paths (INT4 keys, INT2 values, three sequences, two layers): a pool with room for the
    /// residual slots only, where the first residual to fill finds no slot (a head's four blocks share the failed
    /// reservation: none may wait for it forever), and tables of one block plus the residual, where the second fill finds
    /// the table full. No error before the filling step; after it, the host reports each as a KvSharpException naming it.
    /// </summary>
    public static string SplitBatchAppendReportsFullPoolAndTable()
    {
        const int hd = 128, batch = 3;
        var kernels = CudaPagedKernels.For(Dev);
        var rnd = new RandomData();
        var c = Shape(8, 2, hd);
        int heads = c.NumHeads, kvHeads = c.NumKvHeads, qkvRow = (heads + 2 * kvHeads) * hd;
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.Int4, ValueFormat = KvFormat.Int2, MaxTokens = 64 };
        long residualBytes = (long)c.NumLayers * batch * kvHeads * 2 * options.BlockTokens * hd * sizeof(float);
        var report = new List<string>();
        foreach (var (what, capacity, poolBytes, steps, message) in new[] { ("pool", 64, (long?)residualBytes, 32, "full"), ("table", 32, null, 64, "more than its") })
        {
            using var gpu = new CudaPagedKvCache(Dev, c, options, capacity, poolBytes, batch);
            if (!kernels.SplitsAppend(gpu.AppendTarget(0), hd)) throw new CheckFailedException($"full {what}: the split kernel is not taken");
            using var invFreq = Upload(new float[hd / 2]);
            using var dqkv = Upload(rnd.Floats(batch * qkvRow, 3f));
            using var qOut = Poisoned((long)batch * heads * hd * 4);
            for (int step = 0; step < steps; step++)
            {
                if (step == steps - 1) gpu.CheckDeviceState(); // nothing reported before the step that fills
                gpu.Position.Upload<int>([.. Enumerable.Repeat(step, batch)]);
                for (int layer = 0; layer < c.NumLayers; layer++)
                    kernels.RopeAppend(dqkv.Pointer, qOut.Pointer, 0, 0, invFreq.Pointer, gpu.AppendTarget(layer), batch, heads, kvHeads, hd,
                        gpu.Position.Pointer, false, 1e-6f, batch: true);
                Dev.Synchronize();
            }
            try
            {
                gpu.CheckDeviceState();
            }
            catch (KvSharpException e) when (e.Message.Contains(message, StringComparison.Ordinal))
            {
                report.Add($"full {what}: \"{e.Message}\"");
                continue;
            }
            throw new CheckFailedException($"full {what}: a residual filled and no full {what} was reported (seed {rnd.Seed})");
        }
        return string.Join("; ", report);
    }

    /// <summary>
    /// Eviction on the device against <see cref="PagedKvCache.Evict(int, int, ReadOnlySpan{bool})"/> with the same drop flags
    /// (mapped to the device's storage order). The two caches may group the kept tokens into different blocks (the CPU
    /// regroups affected blocks' tokens by format pair, the device re-encodes runs in storage order), so what must agree is
    /// checked: per head the same kept token count (and, for one float format, the same block count), and for every kept position the same formats and decoded K/V rows equal to the CPU's,
    /// exactly for F32/F16/BF16/FP8 (re-encoding a decoded float is lossless) and within the two re-quantizations' bound for
    /// the quantized formats; then attention over the evicted device cache against float64 attention over its blocks
    /// decoded by the CPU codec (so the tables, counts and compacted pool are what the kernel reads).
    /// </summary>
    public static string EvictMatchesCpu()
    {
        int checkedRows = 0;
        double worst = 0;
        foreach (int hd in new[] { 128, 64 })
            foreach (var f in Cases)
            {
                var rnd = new RandomData();
                var c = Shape(8, 2, hd);
                int length = 150 + rnd.Next(150);
                using var cpu = CpuCache(c, f, length, rnd, evict: false);
                using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, length + 8);
                var drops = new List<bool[]>();
                var keptStorage = new List<int[]>();
                var bounds = new List<(double KeyRange, double KeyAbs, double ValueRange, double ValueAbs)>();
                for (int l = 0; l < c.NumLayers; l++)
                    for (int g = 0; g < c.NumKvHeads; g++)
                    {
                        var logical = cpu.Positions(l, g).ToArray();
                        var storage = cpu.ReadStore(l, g).StoragePositions();
                        var (k0, v0) = cpu.Read(l, g);
                        bounds.Add((k0.Max() - (double)k0.Min(), k0.Max(Math.Abs), v0.Max() - (double)v0.Min(), v0.Max(Math.Abs)));
                        int n = logical.Length;
                        // Runs of kept blocks, runs of dropped tokens, scattered drops: every path of the rewrite.
                        int mode = rnd.Next(3);
                        var drop = Enumerable.Range(0, n).Select(i => mode switch
                        {
                            0 => i / 32 % 3 == 1 && rnd.Next(4) == 0,
                            1 => rnd.Next(10) < 5,
                            _ => i >= n - 5 || (i > 40 && i < 70),
                        }).ToArray();
                        var deviceDrop = storage.Select(p => drop[Array.BinarySearch(logical, p)]).ToArray();
                        keptStorage.Add([.. storage.Where((_, s) => !deviceDrop[s])]);
                        cpu.Evict(l, g, drop);
                        drops.Add(deviceDrop);
                    }
                gpu.Evict(drops);
                var lengths = gpu.HeadLengths();
                var decoded = new (float[] K, float[] V)[c.NumLayers * c.NumKvHeads];
                for (int l = 0; l < c.NumLayers; l++)
                    for (int g = 0; g < c.NumKvHeads; g++)
                    {
                        int h = l * c.NumKvHeads + g;
                        string what = $"evict {Name(f)} hd{hd} layer {l} head {g} (seed {rnd.Seed})";
                        var positions = cpu.Positions(l, g).ToArray();
                        if (lengths[h] != positions.Length || keptStorage[h].Length != positions.Length)
                            throw new CheckFailedException($"{what}: {lengths[h]} tokens, expected {positions.Length}");
                        var deviceHead = gpu.ReadHead(l, g);
                        var (gk, gv, formats) = DecodeDeviceHead(deviceHead, hd);
                        decoded[h] = (gk, gv);
                        if (formats.Length != positions.Length) throw new CheckFailedException($"{what}: device blocks hold {formats.Length} tokens, expected {positions.Length}");
                        // One float format: the blocks kept whole after a partial one join it, so the device ends in at most one
                        // partial block as the CPU does, and holds as many blocks (mode 0 keeps whole blocks between affected ones).
                        if (f is { } single && !single.IsQuantized() && deviceHead.Count - 1 != cpu.ReadStore(l, g).Blocks.Count)
                            throw new CheckFailedException($"{what}: {deviceHead.Count - 1} encoded blocks on the device, {cpu.ReadStore(l, g).Blocks.Count} on the CPU");
                        var cpuFormats = CpuFormats(cpu.ReadStore(l, g));
                        var (ck, cv) = cpu.Read(l, g);
                        var (kr, ka, vr, va) = bounds[h];
                        for (int s = 0; s < formats.Length; s++)
                        {
                            int p = keptStorage[h][s], i = Array.BinarySearch(positions, p);
                            if (i < 0) throw new CheckFailedException($"{what}: the device keeps position {p}, which the CPU evicted");
                            if (cpuFormats[p] != formats[s])
                                throw new CheckFailedException($"{what}: position {p} is {formats[s].Key}/{formats[s].Value} on the device, {cpuFormats[p].Key}/{cpuFormats[p].Value} on the CPU");
                            SameRow($"{what} position {p} key", gk.AsSpan(s * hd, hd), ck.AsSpan(i * hd, hd), Tolerance(formats[s].Key, kr, ka));
                            SameRow($"{what} position {p} value", gv.AsSpan(s * hd, hd), cv.AsSpan(i * hd, hd), Tolerance(formats[s].Value, vr, va));
                            checkedRows++;
                        }
                    }

                // Attention over the evicted device cache (planned split, the cache's default kernel, 1 and 3 rows).
                const int layer = 1;
                var (desc, blocks, tokens) = gpu.LayerTables(layer);
                int heads = c.NumHeads;
                foreach (int rows in new[] { 1, 3 })
                {
                    var q = rnd.Floats(rows * heads * hd, 2f);
                    var expected = Reference(g => decoded[layer * c.NumKvHeads + g], c, q, rows);
                    using var dq = Upload(q);
                    var plan = gpu.PlanAttention(null!, length, rows);
                    using var po = Poisoned((long)rows * heads * plan.Splits * hd * 4);
                    using var pml = Poisoned((long)rows * heads * plan.Splits * 8);
                    using var counters = Dev.Allocate(rows * c.NumKvHeads * 4L);
                    counters.Fill32(0);
                    using var dout = Poisoned((long)rows * heads * hd * 4);
                    gpu.PagedKernels.Attention(dq.Pointer, gpu.PoolPointer, desc, blocks, tokens, dout.Pointer, po.Pointer, pml.Pointer, counters.Pointer,
                        rows, heads, c.NumKvHeads, hd, gpu.MaxBlocks, gpu.BlockTokens, gpu.ValueGroup, plan, gpu.AttentionKernel);
                    var got = Result(dout, rows * heads * hd);
                    Compare.Relative($"attention after evict {Name(f)} hd{hd} rows{rows} (seed {rnd.Seed})", got, expected, 1e-4);
                    worst = Math.Max(worst, Compare.RelativeError(got, expected));
                }
            }
        return $"{checkedRows} kept rows after device eviction agree with the CPU's (every supported format and mixed, hd 128 and 64), attention over them worst rel err {worst:E2}";
    }

    /// <summary>Each stored position's key and value formats in a CPU head (tail rows are F32).</summary>
    private static Dictionary<int, (KvFormat Key, KvFormat Value)> CpuFormats(HeadStore store)
    {
        var formats = new Dictionary<int, (KvFormat, KvFormat)>();
        foreach (var e in store.Blocks)
            foreach (int p in e.Positions) formats[p] = (e.KeyLayout.Format, e.ValueLayout.Format);
        foreach (int p in store.TailPositions) formats[p] = (KvFormat.F32, KvFormat.F32);
        return formats;
    }

    /// <summary>
    /// Largest difference between a row the device re-encoded and the CPU's, each re-encoded at most once from the same
    /// decoded values in groups of (possibly) different tokens: 0 for the float formats; for INT-b two half steps of a group
    /// whose range is at most the head's range R (R / (2^b - 1)), plus the f16 rounding of the stored parameters; for
    /// ternary (x ≈ t·mean|x|) twice the largest |x|; for binary (x ≈ mean ± mean|x - mean|) twice 2R.
    /// </summary>
    private static double Tolerance(KvFormat format, double range, double abs)
    {
        double parameters = 4.0 / 2048 * (range + abs);
        return format switch
        {
            KvFormat.F32 or KvFormat.F16 or KvFormat.BF16 or KvFormat.Fp8E4M3 => 0,
            KvFormat.Int8 or KvFormat.Int4 or KvFormat.Int2 => range / ((1 << format.BitsPerElement()) - 1) + parameters,
            KvFormat.Ternary => 2 * abs + parameters,
            KvFormat.Binary => 4 * range + parameters,
            _ => throw new CheckFailedException($"no re-quantization bound for {format}"),
        };
    }

    private static void SameRow(string what, ReadOnlySpan<float> got, ReadOnlySpan<float> expected, double tolerance)
    {
        for (int d = 0; d < got.Length; d++)
            if (!(Math.Abs(got[d] - (double)expected[d]) <= tolerance))
                throw new CheckFailedException($"{what}: channel {d} is {got[d]}, expected {expected[d]} (tolerance {tolerance:G3})");
    }

    /// <summary>Runs <paramref name="action"/>, which must throw a KvSharpException whose message says VidKV is not supported.</summary>
    internal static string Refusal(string what, Action action)
    {
        try
        {
            action();
        }
        catch (KvSharpException e) when (e.Message.Contains("does not support VidKV", StringComparison.Ordinal))
        {
            return $"{what}: \"{e.Message}\"";
        }
        catch (Exception e)
        {
            throw new CheckFailedException($"{what}: threw {e.GetType().Name} \"{e.Message}\", expected the VidKV refusal");
        }
        throw new CheckFailedException($"{what}: no exception, expected the VidKV refusal");
    }

    /// <summary>
    /// The transformer over the paged cache against the CPU engine on a small Llama-shaped float32 model: prompt logits and
    /// greedy tokens through the decode graph with F32 blocks (lossless, tight), and with INT4 blocks (encoded on the device
    /// as the residual fills; looser, since the GPU's RoPE differs from the CPU's by rounding and a code may flip); head
    /// dimension 64 with the CUDA-core kernels, 128 with the tensor-core one.
    /// </summary>
    public static string TransformerMatchesCpu()
    {
        var rnd = new RandomData();
        var report = new List<string>();
        foreach (int hd in new[] { 64, 128 })
        {
            var config = Shape(8, 2, hd) with { NumLayers = 2, HiddenSize = 8 * hd, IntermediateSize = 768, RopeTheta = 10000, RopeStyle = RopeStyle.HalfSplit };
            using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
            using var gpu = new CudaTransformer(Dev, weights, DeviceWeightType.F32);
            var cpu = new Transformer(weights);
            var prompt = Enumerable.Range(0, 45).Select(_ => rnd.Next(config.VocabSize)).ToArray();
            const int steps = 30;
            int vocab = config.VocabSize, capacity = prompt.Length + steps + 1;
            // hd 64: the CUDA-core kernels; hd 128: both tensor-core kernels (their shape).
            var cases = hd == 64
                ? new[] { (KvFormat.F32, 1e-4, PagedAttentionKernel.Wide), (KvFormat.Int4, 3e-2, PagedAttentionKernel.Wide), (KvFormat.F32, 1e-4, PagedAttentionKernel.LaneChannels) }
                : new[]
                {
                    (KvFormat.F32, 1e-4, PagedAttentionKernel.TensorCores), (KvFormat.Int4, 3e-2, PagedAttentionKernel.TensorCores),
                    (KvFormat.F32, 1e-4, PagedAttentionKernel.Pipelined), (KvFormat.Int4, 3e-2, PagedAttentionKernel.Pipelined),
                };
            foreach (var (format, tolerance, kernel) in cases)
            {
                var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = capacity };
                using var cpuCache = new PagedKvCache(config, options);
                var cpuLogits = cpu.Forward(prompt, cpuCache, LogitsMode.All);
                var cpuTokens = new List<int> { ArgMax(cpuLogits.AsSpan((prompt.Length - 1) * vocab, vocab)) };
                for (int i = 1; i < steps; i++) cpuTokens.Add(ArgMax(cpu.Forward([cpuTokens[^1]], cpuCache)));

                using (var cache = gpu.CreatePagedCache(options, capacity))
                {
                    cache.AttentionKernel = kernel;
                    var logits = gpu.Forward(prompt, cache, LogitsMode.All);
                    report.Add(Compare.Relative($"paged {format} hd{hd} ({kernel}) prompt logits", logits, cpuLogits.Select(x => (double)x).ToArray(), tolerance));
                }
                // F32 blocks also with the attention asking L2 for the output projection (a hint: the same tokens).
                foreach (bool prefetch in format == KvFormat.F32 ? [false, true] : new[] { false })
                    using (var cache = gpu.CreatePagedCache(options, capacity))
                    {
                        cache.AttentionKernel = kernel;
                        gpu.PrefetchNextWeights = prefetch;
                        var tokens = gpu.GenerateGreedy(prompt, steps, cache);
                        gpu.PrefetchNextWeights = false;
                        int same = tokens.Zip(cpuTokens).TakeWhile(p => p.First == p.Second).Count();
                        string what = $"paged {format} hd{hd} ({kernel}{(prefetch ? ", L2 prefetch" : "")})";
                        if (format == KvFormat.F32 && same != steps)
                            throw new CheckFailedException($"{what} greedy tokens differ from the CPU's at step {same} (seed {rnd.Seed}): [{string.Join(",", tokens)}] vs [{string.Join(",", cpuTokens)}]");
                        report.Add($"{what}: {same}/{steps} greedy tokens as the CPU");
                    }
            }
        }
        return string.Join("; ", report) + $" (seed {rnd.Seed})";
    }

    /// <summary>
    /// The batch-1 decode QKV product that appends in its epilogue (paged_qkv_rope_append, <see cref="CudaTransformer.FuseRopeIntoQkv"/>)
    /// against the plain product + paged_rope_append (checked against the CPU codec by <see cref="AppendMatchesCpuCodec"/>): the same
    /// model decodes 100 greedy steps through the captured graph from the same prefill into two caches, one per path, crossing 3-4
    /// residual fills per head, and every head's blocks (formats, counts, first tokens, bytes) and residual rows, and the greedy
    /// tokens, must be identical. Float, quantized and mixed key/value formats; each also after a random eviction of 10-60% of
    /// every head's tokens (different lengths per head, so the heads of a layer fill at different steps); bfloat16 weights at
    /// hd 128, float16 at hd 64 (interleaved RoPE). One layer: a layer's K/V are then a deterministic function of the tokens,
    /// where a later layer's depend on the accumulating products' atomic adds (split rows), whose order changes the last bit
    /// from run to run (a first device run with two layers saw layer 0 identical and layer 1 one f16 ulp apart).
    /// </summary>
    public static string FusedAppendMatchesUnfused()
    {
        var rnd = new RandomData();
        int comparedBlocks = 0, cases = 0;
        foreach (int hd in new[] { 128, 64 })
        {
            var config = Shape(8, 4, hd) with
            {
                NumLayers = 1,
                HiddenSize = 8 * hd,
                IntermediateSize = 768,
                RopeTheta = 10000,
                RopeStyle = hd == 64 ? RopeStyle.Interleaved : RopeStyle.HalfSplit,
            };
            using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
            using var gpu = new CudaTransformer(Dev, weights, hd == 128 ? DeviceWeightType.BF16 : DeviceWeightType.F16);
            var prompt = Enumerable.Range(0, 45).Select(_ => rnd.Next(config.VocabSize)).ToArray();
            const int steps = 100;
            int capacity = prompt.Length + steps + 1;
            var formats = new[] { (KvFormat.F16, KvFormat.F16), (KvFormat.Int4, KvFormat.Int4), (KvFormat.Int2, KvFormat.Int2), (KvFormat.Fp8E4M3, KvFormat.Int4) };
            foreach (var (kf, vf) in formats)
                foreach (bool evict in new[] { false, true })
                {
                    string what = $"fused append {kf}/{vf} hd{hd}{(evict ? " after eviction" : "")} (seed {rnd.Seed})";
                    var options = new PagedKvCacheOptions { KeyFormat = kf, ValueFormat = vf, MaxTokens = capacity };
                    bool[][]? drop = null;
                    var results = new List<(int[] Tokens, List<IReadOnlyList<CudaPagedKvCache.DeviceBlock>> Heads)>();
                    foreach (bool fused in new[] { true, false })
                    {
                        gpu.FuseRopeIntoQkv = fused;
                        using var cache = gpu.CreatePagedCache(options, capacity);
                        int first = ArgMax(gpu.Forward(prompt, cache));
                        if (evict)
                        {
                            drop ??= cache.HeadLengths().Select(n =>
                            {
                                double rate = 0.1 + 0.5 * rnd.Next(1000) / 1000.0;
                                return Enumerable.Range(0, n).Select(_ => rnd.Next(1000) < rate * 1000).ToArray();
                            }).ToArray();
                            cache.Evict(drop);
                        }
                        if (fused && !cache.FusesAppend) throw new CheckFailedException($"{what}: the cache does not take the fused append");
                        gpu.BeginDecode(cache, [first]);
                        gpu.EnqueueDecodeSteps(cache, steps);
                        Dev.Synchronize();
                        cache.CheckDeviceState();
                        var history = new int[capacity];
                        cache.History.Download<int>(history);
                        var heads = new List<IReadOnlyList<CudaPagedKvCache.DeviceBlock>>();
                        for (int layer = 0; layer < config.NumLayers; layer++)
                            for (int g = 0; g < config.NumKvHeads; g++) heads.Add(cache.ReadHead(layer, g));
                        results.Add((history.AsSpan(prompt.Length, steps).ToArray(), heads));
                    }
                    gpu.FuseRopeIntoQkv = true;
                    var (fusedRun, plainRun) = (results[0], results[1]);
                    int same = fusedRun.Tokens.Zip(plainRun.Tokens).TakeWhile(p => p.First == p.Second).Count();
                    if (same != steps) throw new CheckFailedException($"{what}: greedy tokens differ at step {same}");
                    for (int h = 0; h < fusedRun.Heads.Count; h++)
                    {
                        var (a, b) = (fusedRun.Heads[h], plainRun.Heads[h]);
                        SameDeviceHead($"{what} head {h}", a, b, hd, "the unfused path");
                        if (a.Count < 4) throw new CheckFailedException($"{what}: head {h} has only {a.Count - 1} encoded blocks (the check needs residual fills)");
                        comparedBlocks += a.Count;
                    }
                    cases++;
                }
        }
        return $"{cases} caches: {comparedBlocks} block pairs (residuals included) and 100 greedy tokens each identical on both paths (seed {rnd.Seed})";
    }

    /// <summary>
    /// A pool with room for the residual slots only: the first residual to fill during graph decode on the fused path (its
    /// encode runs in the QKV product's last block per head) finds no slot, and the host reports the full pool as a
    /// KvSharpException naming it.
    /// </summary>
    public static string FusedAppendReportsFullPool()
    {
        var rnd = new RandomData();
        var config = Shape(8, 2, 128) with { NumLayers = 1, HiddenSize = 1024, IntermediateSize = 768, RopeTheta = 10000 };
        using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
        using var gpu = new CudaTransformer(Dev, weights, DeviceWeightType.BF16);
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.Int4, ValueFormat = KvFormat.Int4, MaxTokens = 64 };
        long residualBytes = (long)config.NumKvHeads * 2 * options.BlockTokens * config.HeadDim * sizeof(float);
        using var cache = gpu.CreatePagedCache(options, 64, poolBytes: residualBytes);
        if (!cache.FusesAppend) throw new CheckFailedException("the cache does not take the fused append");
        int first = ArgMax(gpu.Forward(Enumerable.Range(0, 20).Select(_ => rnd.Next(config.VocabSize)).ToArray(), cache));
        gpu.BeginDecode(cache, [first]);
        gpu.EnqueueDecodeSteps(cache, 8); // 28 tokens: no residual full yet
        Dev.Synchronize();
        cache.CheckDeviceState();
        gpu.EnqueueDecodeSteps(cache, 8); // the 32nd token fills every head's residual
        Dev.Synchronize();
        try
        {
            cache.CheckDeviceState();
        }
        catch (KvSharpException e) when (e.Message.Contains("pool", StringComparison.Ordinal) && e.Message.Contains("full", StringComparison.Ordinal))
        {
            return $"\"{e.Message}\" (seed {rnd.Seed})";
        }
        throw new CheckFailedException($"a residual filled in a pool without a free slot and no full pool was reported (seed {rnd.Seed})");
    }

    /// <summary>Compares a device head with a CPU head: blocks (layouts, counts, bytes), then the residual against the float tail.</summary>
    internal static int SameHead(string what, HeadStore cpu, IReadOnlyList<CudaPagedKvCache.DeviceBlock> gpu, int hd)
    {
        var blocks = cpu.Blocks;
        if (gpu.Count != blocks.Count + 1) throw new CheckFailedException($"{what}: {gpu.Count - 1} blocks + residual, expected {blocks.Count}");
        int start = 0;
        for (int b = 0; b < blocks.Count; b++)
        {
            var e = blocks[b];
            var d = gpu[b];
            if (d.KeyLayout != e.KeyLayout || d.ValueLayout != e.ValueLayout || d.Count != e.Count || d.Start != start)
                throw new CheckFailedException($"{what}: block {b} is {d.KeyLayout}/{d.ValueLayout} x{d.Count} at {d.Start}, expected {e.KeyLayout}/{e.ValueLayout} x{e.Count} at {start}");
            FirstDifference(what + $" block {b} keys", d.Keys, e.KeyBytes[..e.KeyLayout.ByteSize]);
            FirstDifference(what + $" block {b} values", d.Values, e.ValueBytes[..e.ValueLayout.ByteSize]);
            start += e.Count;
        }
        var r = gpu[^1];
        if (r.Count != cpu.TailCount || r.Start != start) throw new CheckFailedException($"{what}: residual of {r.Count} at {r.Start}, expected tail of {cpu.TailCount} at {start}");
        FirstDifference(what + " residual keys", r.Keys.AsSpan(0, r.Count * hd * 4), MemoryMarshal.AsBytes(cpu.TailKeys));
        FirstDifference(what + " residual values", r.Values.AsSpan(0, r.Count * hd * 4), MemoryMarshal.AsBytes(cpu.TailValues));
        return blocks.Count;
    }

    internal static void FirstDifference(string what, ReadOnlySpan<byte> got, ReadOnlySpan<byte> expected)
    {
        if (got.Length != expected.Length) throw new CheckFailedException($"{what}: {got.Length} bytes, expected {expected.Length}");
        int i = got.CommonPrefixLength(expected);
        if (i < got.Length) throw new CheckFailedException($"{what}: byte {i} of {got.Length} is {got[i]:X2}, expected {expected[i]:X2}");
    }

    /// <summary>
    /// Two device reads of a head hold the same blocks: count, layouts, token counts, first tokens and bytes (the residual,
    /// the last, its stored rows only). <paramref name="other"/> names the expected read in the messages.
    /// </summary>
    internal static void SameDeviceHead(string what, IReadOnlyList<CudaPagedKvCache.DeviceBlock> got, IReadOnlyList<CudaPagedKvCache.DeviceBlock> expected,
        int hd, string other)
    {
        if (got.Count != expected.Count) throw new CheckFailedException($"{what}: {got.Count - 1} blocks + residual, {other} {expected.Count - 1}");
        for (int i = 0; i < got.Count; i++)
        {
            var (x, y) = (got[i], expected[i]);
            string block = $"{what} block {i}";
            if (x.KeyLayout != y.KeyLayout || x.ValueLayout != y.ValueLayout || x.Count != y.Count || x.Start != y.Start)
                throw new CheckFailedException($"{block}: {x.KeyLayout}/{x.ValueLayout} x{x.Count} at {x.Start}, {other} {y.KeyLayout}/{y.ValueLayout} x{y.Count} at {y.Start}");
            bool residual = i == got.Count - 1;
            int rows = x.Count * hd * sizeof(float);
            FirstDifference(block + " keys", residual ? x.Keys.AsSpan(0, rows) : x.Keys, residual ? y.Keys.AsSpan(0, rows) : y.Keys);
            FirstDifference(block + " values", residual ? x.Values.AsSpan(0, rows) : x.Values, residual ? y.Values.AsSpan(0, rows) : y.Values);
        }
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
