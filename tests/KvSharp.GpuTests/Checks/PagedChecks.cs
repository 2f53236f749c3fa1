using System.Runtime.InteropServices;
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
/// K/V; its appends (device quantization) and evictions against the CPU cache's bytes; the transformer over it against
/// the CPU engine. Fresh random inputs every run; outputs poisoned with NaN before each launch.
/// </summary>
public static class PagedChecks
{
    private static CudaDevice Dev => CudaDevice.Shared;

    /// <summary>The formats checked one by one; null stands for a mixed-format cache.</summary>
    private static readonly KvFormat?[] Cases = [.. Enum.GetValues<KvFormat>().Select(f => (KvFormat?)f), null];

    private static ModelConfig Shape(int heads, int kvHeads, int hd) => new()
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
    /// A CPU cache of <paramref name="length"/> random tokens per layer in format <paramref name="f"/> (both K and V), or for a
    /// mixed case F16 blocks with tokens re-quantized to INT2/INT4, FP8/ternary, binary/INT8 and BF16/F32; then each head
    /// loses a random share of its tokens (per-head lengths, partial blocks) unless <paramref name="evict"/> is false.
    /// </summary>
    private static PagedKvCache CpuCache(ModelConfig c, KvFormat? f, int length, RandomData rnd, bool evict)
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

    /// <summary>Float64 attention of rows q [rows, heads, hd] over the decoded K/V of each head; row t sees all but the last rows-1-t tokens.</summary>
    private static double[] Reference(PagedKvCache cpu, ModelConfig c, int layer, float[] q, int rows)
    {
        int heads = c.NumHeads, hd = c.HeadDim, group = heads / c.NumKvHeads;
        var expected = new double[rows * heads * hd];
        for (int g = 0; g < c.NumKvHeads; g++)
        {
            var (k, v) = cpu.Read(layer, g);
            int stored = k.Length / hd;
            for (int t = 0; t < rows; t++)
                for (int h = g * group; h < (g + 1) * group; h++)
                {
                    int visible = stored - (rows - 1 - t);
                    if (visible <= 0) continue; // no visible token: the kernel outputs zeros
                    var s = new double[visible];
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < visible; j++)
                    {
                        double dot = 0;
                        for (int d = 0; d < hd; d++) dot += (double)q[(t * heads + h) * hd + d] * k[j * hd + d];
                        s[j] = dot / Math.Sqrt(hd);
                        max = Math.Max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < visible; j++) { s[j] = Math.Exp(s[j] - max); sum += s[j]; }
                    for (int d = 0; d < hd; d++)
                    {
                        double acc = 0;
                        for (int j = 0; j < visible; j++) acc += s[j] * v[j * hd + d];
                        expected[(t * heads + h) * hd + d] = acc / sum;
                    }
                }
        }
        return expected;
    }

    /// <summary>
    /// Decode attention over every block format and a mixed-format cache, GQA groups 1/2/4/8, head dims 64/128, heads of
    /// different lengths, 1 and 3 query rows (causal), the planned split and one block per split (many chunks to merge).
    /// </summary>
    public static string Attention()
    {
        var report = new List<string>();
        double worst = 0;
        foreach (var (heads, kvHeads, hd) in new[] { (16, 4, 128), (8, 8, 64), (16, 2, 128), (8, 4, 64) })
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
                    var expected = Reference(cpu, c, layer, q, rows);
                    using var dq = Upload(q);
                    foreach (bool wide in new[] { true, false })
                    {
                        gpu.WideAttention = wide;
                        var planned = gpu.PlanAttention(null!, length, rows);
                        // Few blocks per split (many chunks to merge), as long as the merge's weights fit the scores area.
                        int few = 1;
                        while ((gpu.MaxBlocks + few - 1) / few > few * gpu.BlockTokens) few++;
                        var one = new CudaKernels.AttentionPlan(few, (gpu.MaxBlocks + few - 1) / few, CudaPagedKernels.SharedBytes(heads / kvHeads, hd, gpu.BlockTokens, few, wide));
                        foreach (var plan in new[] { planned, one })
                        {
                            using var po = Poisoned((long)rows * heads * plan.Splits * hd * 4);
                            using var pml = Poisoned((long)rows * heads * plan.Splits * 8);
                            using var counters = Dev.Allocate(rows * kvHeads * 4L);
                            counters.Fill32(0);
                            for (int launch = 0; launch < 2; launch++) // the second launch shows the counters were left at zero
                            {
                                using var dout = Poisoned((long)rows * heads * hd * 4);
                                k.Attention(dq.Pointer, gpu.PoolPointer, desc, blocks, tokens, dout.Pointer, po.Pointer, pml.Pointer, counters.Pointer,
                                    rows, heads, kvHeads, hd, gpu.MaxBlocks, gpu.BlockTokens, gpu.ValueGroup, plan, wide);
                                var got = Result(dout, rows * heads * hd);
                                string what = $"paged attention ({(wide ? "wide" : "lane channels")}) {Name(f)} H{heads}/KV{kvHeads} hd{hd} len{length} rows{rows} splits{plan.Splits} (seed {rnd.Seed})";
                                Compare.Relative(what, got, expected, 1e-4);
                                worst = Math.Max(worst, RelativeError(got, expected));
                            }
                        }
                    }
                }
                report.Add($"{Name(f)}/hd{hd}/G{heads / kvHeads}");
            }
        return $"{report.Count} caches (every format and mixed, groups 1/2/4/8, hd 64/128, rows 1 and 3, two splits each, both kernels), worst rel err {worst:E2}";
    }

    /// <summary>
    /// Appends through the device's RoPE + append kernel (zero RoPE frequencies: rotation by 0 keeps the rows exact) in one
    /// 40-row call and then one row at a time: the blocks the device encodes when a residual fills are byte for byte the
    /// CPU cache's for the same rows, and the residual holds the CPU's float tail.
    /// </summary>
    public static string AppendMatchesCpuCodec()
    {
        int checkedBlocks = 0;
        foreach (int hd in new[] { 128, 64 })
            foreach (var f in Enum.GetValues<KvFormat>())
            {
                var rnd = new RandomData();
                var c = Shape(8, 2, hd);
                int heads = c.NumHeads, kvHeads = c.NumKvHeads, total = 40 + 37, qkvRow = (heads + 2 * kvHeads) * hd;
                var options = new PagedKvCacheOptions { KeyFormat = f, ValueFormat = f, MaxTokens = 128 };
                using var cpu = new PagedKvCache(c, options);
                using var gpu = new CudaPagedKvCache(Dev, c, options, 128);
                using var invFreq = Upload(new float[hd / 2]);
                for (int layer = 0; layer < c.NumLayers; layer++)
                {
                    var qkv = rnd.Floats(total * qkvRow, 3f);
                    for (int i = 0; i < qkv.Length; i++) qkv[i] += (i % hd) % 5 - 2;
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
                                throw new CheckFailedException($"append {f} hd{hd}: query {t}/{i} is {q[t * heads * hd + i]}, expected {qkv[t * qkvRow + i]} (seed {rnd.Seed})");
                }
                for (int layer = 0; layer < c.NumLayers; layer++)
                    for (int g = 0; g < kvHeads; g++)
                        checkedBlocks += SameHead($"append {f} hd{hd} layer {layer} head {g} (seed {rnd.Seed})", cpu.ReadStore(layer, g), gpu.ReadHead(layer, g), hd);
            }
        return $"{checkedBlocks} device-encoded block pairs equal the CPU codec's bytes (every format, hd 128 and 64)";
    }

    /// <summary>
    /// Eviction on the device against <see cref="PagedKvCache.Evict(int, int, ReadOnlySpan{bool})"/> with the same drop flags: the
    /// same blocks byte for byte (kept, or re-encoded runs of each format), the same residual rows, the same head lengths.
    /// </summary>
    public static string EvictMatchesCpu()
    {
        int checkedBlocks = 0;
        foreach (int hd in new[] { 128, 64 })
            foreach (var f in Cases)
            {
                var rnd = new RandomData();
                var c = Shape(8, 2, hd);
                int length = 150 + rnd.Next(150);
                using var cpu = CpuCache(c, f, length, rnd, evict: false);
                using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, length + 8);
                var drops = new List<bool[]>();
                for (int l = 0; l < c.NumLayers; l++)
                    for (int g = 0; g < c.NumKvHeads; g++)
                    {
                        int n = cpu.Positions(l, g).Count;
                        // Runs of kept blocks, runs of dropped tokens, scattered drops: every path of the rewrite.
                        int mode = rnd.Next(3);
                        var drop = Enumerable.Range(0, n).Select(i => mode switch
                        {
                            0 => i / 32 % 3 == 1 && rnd.Next(4) == 0,
                            1 => rnd.Next(10) < 5,
                            _ => i >= n - 5 || (i > 40 && i < 70),
                        }).ToArray();
                        cpu.Evict(l, g, drop);
                        drops.Add(drop);
                    }
                gpu.Evict(drops);
                var lengths = gpu.HeadLengths();
                for (int l = 0; l < c.NumLayers; l++)
                    for (int g = 0; g < c.NumKvHeads; g++)
                    {
                        string what = $"evict {Name(f)} hd{hd} layer {l} head {g} (seed {rnd.Seed})";
                        if (lengths[l * c.NumKvHeads + g] != cpu.Positions(l, g).Count)
                            throw new CheckFailedException($"{what}: {lengths[l * c.NumKvHeads + g]} tokens, expected {cpu.Positions(l, g).Count}");
                        checkedBlocks += SameHead(what, cpu.ReadStore(l, g), gpu.ReadHead(l, g), hd);
                    }
            }
        return $"{checkedBlocks} block pairs after device eviction equal the CPU cache's (every format and mixed, hd 128 and 64)";
    }

    /// <summary>
    /// The transformer over the paged cache against the CPU engine on a small Llama-shaped float32 model: prompt logits and
    /// greedy tokens through the decode graph with F32 blocks (lossless, tight), and with INT4 blocks (encoded on the device
    /// as the residual fills; looser, since the GPU's RoPE differs from the CPU's by rounding and a code may flip).
    /// </summary>
    public static string TransformerMatchesCpu()
    {
        var rnd = new RandomData();
        var config = Shape(8, 2, 64) with { NumLayers = 2, HiddenSize = 512, IntermediateSize = 768, RopeTheta = 10000, RopeStyle = RopeStyle.HalfSplit };
        using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
        using var gpu = new CudaTransformer(Dev, weights, DeviceWeightType.F32);
        var cpu = new Transformer(weights);
        var prompt = Enumerable.Range(0, 45).Select(_ => rnd.Next(config.VocabSize)).ToArray();
        const int steps = 30;
        int vocab = config.VocabSize, capacity = prompt.Length + steps + 1;
        var report = new List<string>();
        foreach (var (format, tolerance, wide) in new[] { (KvFormat.F32, 1e-4, true), (KvFormat.Int4, 3e-2, true), (KvFormat.F32, 1e-4, false) })
        {
            var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = capacity };
            using var cpuCache = new PagedKvCache(config, options);
            var cpuLogits = cpu.Forward(prompt, cpuCache, LogitsMode.All);
            var cpuTokens = new List<int> { ArgMax(cpuLogits.AsSpan((prompt.Length - 1) * vocab, vocab)) };
            for (int i = 1; i < steps; i++) cpuTokens.Add(ArgMax(cpu.Forward([cpuTokens[^1]], cpuCache)));

            string kernel = wide ? "wide" : "lane channels";
            using (var cache = gpu.CreatePagedCache(options, capacity))
            {
                cache.WideAttention = wide;
                var logits = gpu.Forward(prompt, cache, LogitsMode.All);
                report.Add(Compare.Relative($"paged {format} ({kernel}) prompt logits", logits, cpuLogits.Select(x => (double)x).ToArray(), tolerance));
            }
            using (var cache = gpu.CreatePagedCache(options, capacity))
            {
                cache.WideAttention = wide;
                var tokens = gpu.GenerateGreedy(prompt, steps, cache);
                int same = tokens.Zip(cpuTokens).TakeWhile(p => p.First == p.Second).Count();
                if (format == KvFormat.F32 && same != steps)
                    throw new CheckFailedException($"paged F32 ({kernel}) greedy tokens differ from the CPU's at step {same} (seed {rnd.Seed}): [{string.Join(",", tokens)}] vs [{string.Join(",", cpuTokens)}]");
                report.Add($"paged {format} ({kernel}): {same}/{steps} greedy tokens as the CPU");
            }
        }
        return string.Join("; ", report) + $" (seed {rnd.Seed})";
    }

    /// <summary>Compares a device head with a CPU head: blocks (layouts, counts, bytes), then the residual against the float tail.</summary>
    private static int SameHead(string what, HeadStore cpu, IReadOnlyList<CudaPagedKvCache.DeviceBlock> gpu, int hd)
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

    private static void FirstDifference(string what, ReadOnlySpan<byte> got, ReadOnlySpan<byte> expected)
    {
        if (got.Length != expected.Length) throw new CheckFailedException($"{what}: {got.Length} bytes, expected {expected.Length}");
        int i = got.CommonPrefixLength(expected);
        if (i < got.Length) throw new CheckFailedException($"{what}: byte {i} of {got.Length} is {got[i]:X2}, expected {expected[i]:X2}");
    }

    private static double RelativeError(float[] got, double[] expected)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < got.Length; i++) { diff += (got[i] - expected[i]) * (got[i] - expected[i]); norm += expected[i] * expected[i]; }
        return Math.Sqrt(diff / Math.Max(norm, 1e-60));
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    private static DeviceBuffer Upload<T>(T[] values) where T : unmanaged
    {
        var b = Dev.Allocate(Math.Max(1, values.Length * Marshal.SizeOf<T>()));
        b.Upload<T>(values);
        return b;
    }

    private static DeviceBuffer Poisoned(long bytes)
    {
        var b = Dev.Allocate(bytes);
        b.Poison();
        return b;
    }

    private static float[] Result(DeviceBuffer b, int n)
    {
        Dev.Synchronize();
        var r = new float[n];
        b.Download<float>(r);
        return r;
    }
}
