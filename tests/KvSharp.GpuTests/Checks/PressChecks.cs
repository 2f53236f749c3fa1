using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Scorers;
using KvSharp.Compute.Cpu;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// Compression on the device against the CPU cache and presses: attention statistics (max and summed folded probability
/// per stored token) against <see cref="PagedKvCache"/>'s statistics for the same queries, re-quantization against
/// <see cref="PagedKvCache.Requantize"/> block for block and byte for byte, and SnapKV scored, selected and evicted on the
/// device against the CPU press's kept tokens on the same model and prompt. Fresh random inputs every run.
/// </summary>
public static class PressChecks
{
    private static CudaDevice Dev => CudaDevice.Shared;

    /// <summary>
    /// Statistics of 1 or 5 query rows (the first rows of a 5-row call not counted) over uploaded CPU caches: one format,
    /// INT2 after random eviction, mixed formats; max and mean folds; head dimensions 64 and 128.
    /// </summary>
    public static string StatisticsMatchCpu()
    {
        var report = new List<string>();
        foreach (int hd in new[] { 128, 64 })
            foreach (var (f, rows, evict, fold) in new (KvFormat?, int, bool, GroupFold)[]
            {
                (KvFormat.F16, 5, false, GroupFold.Mean), (KvFormat.Int4, 5, false, GroupFold.Max),
                (KvFormat.Int2, 1, true, GroupFold.Mean), (null, 1, true, GroupFold.Max),
            })
            {
                var rnd = new RandomData();
                var c = PagedChecks.Shape(8, 2, hd);
                int length = 200 + rnd.Next(200);
                using var cpu = PagedChecks.CpuCache(c, f, length, rnd, evict);
                using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, length + 8);
                // The rows are the last `rows` positions (multi-row calls only over caches in position order, where the
                // device's storage-order causal rule and the CPU's position rule agree); the first two of five are not counted.
                int firstPosition = length - rows, firstCounted = rows > 1 ? 2 : 0;
                var request = new AttentionStatisticsRequest(firstPosition + firstCounted, fold);
                cpu.BeginStatistics(request);
                gpu.BeginStatistics(request);
                var output = new float[rows * c.NumHeads * hd];
                var queries = new List<DeviceBuffer>();
                for (int l = 0; l < c.NumLayers; l++)
                {
                    var q = rnd.Floats(rows * c.NumHeads * hd, 2f);
                    cpu.Attend(l, q, rows, firstPosition, output);
                    queries.Add(DeviceData.Upload(q));
                    gpu.AttendForStatistics(l, queries[^1].Pointer, rows, firstCounted);
                }
                var expected = cpu.EndStatistics();
                var (max, sum) = gpu.EndStatistics(); // synchronizes: the queries may go
                foreach (var b in queries) b.Dispose();
                var gotMax = new List<float>();
                var gotSum = new List<float>();
                var expMax = new List<double>();
                var expSum = new List<double>();
                for (int l = 0; l < c.NumLayers; l++)
                    for (int g = 0; g < c.NumKvHeads; g++)
                    {
                        int h = l * c.NumKvHeads + g;
                        var positions = expected.Positions(l, g).ToArray();
                        var storage = cpu.ReadStore(l, g).StoragePositions();
                        if (max[h].Length != positions.Length)
                            throw new CheckFailedException($"statistics layer {l} head {g}: the device covers {max[h].Length} tokens, the CPU {positions.Length} (seed {rnd.Seed})");
                        for (int s = 0; s < storage.Length; s++)
                        {
                            int i = Array.BinarySearch(positions, storage[s]);
                            gotMax.Add(max[h][s]);
                            gotSum.Add(sum[h][s]);
                            expMax.Add(expected.MaxProbability(l, g)[i]);
                            expSum.Add(expected.SumProbability(l, g)[i]);
                        }
                    }
                string what = $"{(f?.ToString() ?? "mixed")}{(evict ? " evicted" : "")} hd{hd} {rows} rows {fold} (seed {rnd.Seed})";
                report.Add(Compare.Relative($"stats max {what}", gotMax.ToArray(), expMax.ToArray(), 1e-4));
                report.Add(Compare.Relative($"stats sum {what}", gotSum.ToArray(), expSum.ToArray(), 1e-4));
            }
        return string.Join("; ", report);
    }

    /// <summary>
    /// Re-quantization of scattered, clustered and tail tokens of fresh caches into other formats on the device gives the CPU
    /// store's blocks byte for byte (same regrouping, same codec) and the same residual rows.
    /// </summary>
    public static string RequantizeMatchesCpu()
    {
        int blocksCompared = 0;
        var cases = new List<string>();
        foreach (int hd in new[] { 128, 64 })
            foreach (var (from, toKey, toValue) in new[]
            {
                (KvFormat.F16, KvFormat.Int2, KvFormat.Int4), (KvFormat.Int4, KvFormat.F16, KvFormat.Fp8E4M3),
                (KvFormat.F32, KvFormat.Ternary, KvFormat.Binary), (KvFormat.Int8, KvFormat.Int8, KvFormat.Int2),
            })
            {
                var rnd = new RandomData();
                var c = PagedChecks.Shape(8, 2, hd);
                int length = 150 + rnd.Next(150);
                using var cpu = PagedChecks.CpuCache(c, from, length, rnd, evict: false);
                // Room for the partial block each regrouped format pair may end in, and a pool for wider target formats
                // (INT4 -> F16 needs more bytes than the upload sizes the pool for).
                using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, length + 4 * 32, poolBytes: 64L << 20);
                var select = new List<bool[]>();
                for (int l = 0; l < c.NumLayers; l++)
                    for (int g = 0; g < c.NumKvHeads; g++)
                    {
                        int n = cpu.Positions(l, g).Count, mode = rnd.Next(3);
                        // Scattered tokens, whole runs of blocks, the last tokens (tail rows join the target's blocks).
                        var flags = Enumerable.Range(0, n).Select(i => mode switch
                        {
                            0 => rnd.Next(3) == 0,
                            1 => i / 32 % 3 == 1,
                            _ => i >= n - 40 || i % 17 == 0,
                        }).ToArray();
                        cpu.Requantize(l, g, flags, toKey, toValue); // a fresh cache: storage order is position order
                        select.Add(flags);
                    }
                gpu.Requantize(select, toKey, toValue);
                for (int l = 0; l < c.NumLayers; l++)
                    for (int g = 0; g < c.NumKvHeads; g++)
                        blocksCompared += PagedChecks.SameHead($"requantize {from}->{toKey}/{toValue} hd{hd} layer {l} head {g} (seed {rnd.Seed})",
                            cpu.ReadStore(l, g), gpu.ReadHead(l, g), hd);
                cases.Add($"{from}->{toKey}/{toValue} hd{hd}");
            }
        return $"{blocksCompared} blocks byte-identical to the CPU store's ({string.Join(", ", cases)})";
    }

    /// <summary>
    /// SnapKV end to end: the CPU press (SnapKV scorer, uniform budget, observation window re-run through the CPU model)
    /// and the device (the same prefilled cache rewound to the window and uploaded, the window run through the GPU model
    /// with statistics on, pooled scores, top-k and eviction on the device) keep the same tokens of every head, on a
    /// Llama-shaped model with float32 weights and float32 and INT4 caches.
    /// </summary>
    public static string SnapKvMatchesCpu()
    {
        var report = new List<string>();
        var rnd = new RandomData();
        using var llama = new SmallLlama(rnd);
        var (config, gpu, model) = (llama.Config, llama.Gpu, llama.Cpu);
        foreach (var (format, window, keepRatio, protect) in new[] { (KvFormat.F32, 8, 0.5, 0), (KvFormat.Int4, 16, 0.3, 4) })
        {
            int length = 120 + rnd.Next(100);
            var tokens = llama.Tokens(length);
            var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = length + 8 };
            using var cpuCache = llama.CpuPrefill(tokens, options);
            // The device starts from the same encoded blocks the CPU press observes: the prefilled cache rewound to the
            // window's start (what the press itself does before re-running the window).
            using var rewound = cpuCache.Fork();
            rewound.Truncate(length - window);
            using var cache = CudaPagedKvCache.Upload(Dev, config, rewound, length + 8);
            var context = new PressContext(model, cpuCache, tokens) { ProtectedPrefix = protect };
            var press = new ScoredPress(new SnapKvScorer(window, kernel: 7, pool: "avg"), new UniformBudget(KeepTarget.Ratio(keepRatio)));
            var masks = press.Select(context);

            cache.BeginStatistics(new AttentionStatisticsRequest(length - window, GroupFold.Mean));
            gpu.Forward(tokens.AsSpan(length - window), cache);
            var drops = cache.SnapKvEvict(7, "avg", KeepCounts(config, length, protect, keepRatio), protect);
            var (heads, kept) = SameKeptTokens($"snapkv {format}", config, length, masks, drops, cache.HeadLengths(), rnd.Seed);
            report.Add($"snapkv {format} window {window} keep {keepRatio} protect {protect}: {heads} heads, the same {kept} of {heads * length} tokens kept");
        }
        return string.Join("; ", report) + $" (seed {rnd.Seed})";
    }

    /// <summary>
    /// H2O end to end on a Llama-shaped model with float32 weights, float32 and INT4 caches: the CPU press
    /// (<c>ScoredPress(H2oScorer, UniformBudget)</c> over the prefilled cache, its chunks re-run through the CPU model) and the
    /// device (the prefill run in the same chunks through the GPU model with the heavy-hitter observation, scores, top-k and
    /// eviction on the device) keep the same tokens of every head.
    /// </summary>
    public static string H2oMatchesCpu()
    {
        var report = new List<string>();
        var rnd = new RandomData();
        using var llama = new SmallLlama(rnd);
        var (config, gpu, model) = (llama.Config, llama.Gpu, llama.Cpu);
        foreach (var (format, window, chunk, keepRatio, protect) in new[] { (KvFormat.F32, 8, 32, 0.5, 0), (KvFormat.Int4, 16, 64, 0.3, 4) })
        {
            int length = 150 + rnd.Next(100);
            var tokens = llama.Tokens(length);
            var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = length + 8 };
            using var cpuCache = llama.CpuPrefill(tokens, options);
            var context = new PressContext(model, cpuCache, tokens) { ProtectedPrefix = protect };
            var masks = new ScoredPress(new H2oScorer(window, chunk), new UniformBudget(KeepTarget.Ratio(keepRatio))).Select(context);

            using var cache = gpu.CreatePagedCache(options, length + 8);
            gpu.Forward(tokens.AsSpan(0, chunk), cache);
            cache.BeginHeavyHitters();
            for (int start = chunk; start < length; start += chunk) gpu.Forward(tokens.AsSpan(start, Math.Min(chunk, length - start)), cache);
            var drops = cache.H2oEvict(window, KeepCounts(config, length, protect, keepRatio), protect);
            var (heads, kept) = SameKeptTokens($"h2o {format}", config, length, masks, drops, cache.HeadLengths(), rnd.Seed);
            report.Add($"h2o {format} window {window} chunk {chunk} keep {keepRatio} protect {protect}: {heads} heads, the same {kept} of {heads * length} tokens kept");
        }
        return string.Join("; ", report) + $" (seed {rnd.Seed})";
    }

    /// <summary>Every head's kept tokens under a uniform <paramref name="keepRatio"/> of the unprotected tokens (the CPU press's budget).</summary>
    private static int[] KeepCounts(ModelConfig config, int length, int protect, double keepRatio) =>
        Enumerable.Range(0, config.NumLayers * config.NumKvHeads)
            .Select(h => KeepTarget.Ratio(keepRatio).ForHead(length - protect, config.NumLayers * config.NumKvHeads)).ToArray();

    /// <summary>
    /// Checks that the device's eviction (<paramref name="drops"/>, on a fresh cache: storage index = position) kept exactly
    /// the CPU press's tokens (<paramref name="masks"/>) in every head, and stores that many; returns the heads and kept tokens.
    /// </summary>
    private static (int Heads, int Kept) SameKeptTokens(string what, ModelConfig config, int length, bool[][] masks, bool[][] drops, int[] lengths, int seed)
    {
        int heads = 0, kept = 0;
        for (int l = 0; l < config.NumLayers; l++)
            for (int g = 0; g < config.NumKvHeads; g++)
            {
                int h = l * config.NumKvHeads + g;
                var cpuKept = Enumerable.Range(0, length).Where(p => masks[h][p]).ToArray();
                var gpuKept = Enumerable.Range(0, length).Where(p => !drops[h][p]).ToArray();
                if (!cpuKept.SequenceEqual(gpuKept) || lengths[h] != cpuKept.Length)
                {
                    var onlyCpu = cpuKept.Except(gpuKept).Take(8);
                    var onlyGpu = gpuKept.Except(cpuKept).Take(8);
                    throw new CheckFailedException($"{what} layer {l} head {g}: the device keeps {gpuKept.Length} tokens ({lengths[h]} stored), the CPU {cpuKept.Length}; only CPU [{string.Join(",", onlyCpu)}], only device [{string.Join(",", onlyGpu)}] (seed {seed})");
                }
                heads++;
                kept += cpuKept.Length;
            }
        return (heads, kept);
    }
}
