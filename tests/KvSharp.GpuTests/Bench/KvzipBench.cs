using System.Diagnostics;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Scorers;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Generation;
using KvSharp.GpuTests.Checks;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Bench;

/// <summary>
/// Issue 7's press numbers: (1) one layer's attention statistics pass (what SnapKV, H2O and KVzip score by) over a
/// synthesized F16 cache of the big config's shape, after a paged attention launch of the same query rows: the
/// statistics kernel taking each row's log-sum-exp from the attention's per-split (max, sum), and, given the previous
/// revision's paged_cache.cu (--baseline), that revision's pair (a log-sum-exp rescan of every key, then the
/// accumulation, 256 query heads per launch) on the same inputs, its results compared with the new ones; (2) the device
/// KVzip press (<see cref="CudaKvzipPress"/>: repeat runs, scores, budget, eviction) after a GPU prefill, on the needle
/// model and on the big config's dummy weights.
/// </summary>
public static class KvzipBench
{
    /// <summary>Runs both parts and writes the log and result tables to <paramref name="log"/>.</summary>
    public static void Run(string configPath, string needleModel, string? baseline, IReadOnlyList<int> contexts, IReadOnlyList<int> rowCounts,
        IReadOnlyList<int> pressContexts, TextWriter log)
    {
        var device = CudaDevice.Shared;
        device.MakeCurrent();
        log.WriteLine($"device: {device}");
        var config = HfConfigReader.Read(configPath);
        CudaTransformer gpu;
        using (var weights = DummyWeights.Create(config, GgmlType.BF16, seed: 7)) gpu = new CudaTransformer(device, weights, DeviceWeightType.BF16);
        using var _ = gpu;
        using var needle = LanguageModel.Load(needleModel);
        StatisticsPass(gpu, config.NumHeads, baseline, contexts, rowCounts, log);

        log.WriteLine();
        log.WriteLine("| model | context | cache | chunk | GPU prefill | GPU KVzip press (scores + budget + evict) | kept tokens |");
        log.WriteLine("|---|---|---|---|---|---|---|");
        using (var needleGpu = new CudaTransformer(device, needle.Weights, DeviceWeightType.BF16))
            foreach (var format in new[] { KvFormat.F16, KvFormat.Int4 })
                Press(needleGpu, needle, "kvsharp-needle-16m (bf16)", 6000, format, log);
        foreach (int context in pressContexts)
            Press(gpu, needle, $"{Path.GetFileNameWithoutExtension(configPath)} (dummy bf16)", context, KvFormat.F16, log);
    }

    /// <summary>One KVzip press (chunk 2000, keep 0.3, global budget, BOS protected) of random tokens after a GPU prefill, timed.</summary>
    private static void Press(CudaTransformer gpu, LanguageModel tokenizerSource, string name, int context, KvFormat format, TextWriter log)
    {
        var rnd = new Random(context);
        int vocab = Math.Min(gpu.Config.VocabSize, tokenizerSource.Config.VocabSize);
        var tokens = Enumerable.Range(0, context).Select(i => i == 0 ? 0 : rnd.Next(2, vocab)).ToArray();
        int capacity = context + 2100;
        var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = capacity };
        using var cache = gpu.CreatePagedCache(options, capacity);
        var sw = Stopwatch.StartNew();
        gpu.Forward(tokens, cache);
        var prefill = sw.Elapsed;
        var press = new CudaKvzipPress(new KvzipScorer(2000), new GlobalBudget(KeepTarget.Ratio(0.3)));
        sw.Restart();
        var keep = press.Compress(gpu, cache, tokens, tokenizerSource.Tokenizer, null, protectedPrefix: 1);
        var pressTime = sw.Elapsed;
        long kept = keep.Sum(k => (long)k.Count(x => x));
        log.WriteLine($"| {name} | {context} | {format} | 2000 | {prefill.TotalMilliseconds:F0} ms | {pressTime.TotalMilliseconds:F0} ms | " +
            $"{kept:N0} of {(long)keep.Length * context:N0} ({(double)kept / ((long)keep.Length * context):P1}) |");
    }

    /// <summary>One layer's statistics pass after its attention launch, new kernel and (with a baseline file) the previous pair.</summary>
    private static void StatisticsPass(CudaTransformer gpu, int heads, string? baseline, IReadOnlyList<int> contexts, IReadOnlyList<int> rowCounts, TextWriter log)
    {
        var device = gpu.Device;
        var c = gpu.Config;
        int kvHeads = c.NumKvHeads, hd = c.HeadDim, group = heads / kvHeads;
        CudaModule? old = baseline == null ? null
            : new CudaModule(device, KernelCompiler.CompileSource("paged_cache_baseline.cu", File.ReadAllText(baseline), device.Architecture));
        using var oldModule = old;
        using var timer = new CudaTimer(device);
        log.WriteLine($"statistics pass: one layer ({heads} query heads over {kvHeads} KV heads, hd {hd}), F16 cache, max fold, every row counted");
        log.WriteLine("| context | query rows | attention launch | statistics, new (lse from part_ml) | statistics, before (lse pass + accumulate) | speed-up | new vs before (max, sum rel. err) |");
        log.WriteLine("|---|---|---|---|---|---|---|");
        foreach (int context in contexts)
            foreach (int rows in rowCounts)
            {
                var options = new PagedKvCacheOptions { KeyFormat = KvFormat.F16, ValueFormat = KvFormat.F16, MaxTokens = context + 8 };
                using var cache = CudaPagedKvCache.Synthesize(device, gpu.Kernels, c, options, Enumerable.Repeat(context, c.NumLayers * kvHeads).ToArray(),
                    context, context + 8, seed: (uint)(context + rows));
                var rnd = new RandomData();
                using var q = DeviceData.Upload(rnd.Floats(rows * heads * hd, 1f));
                var plan = cache.PlanAttention(gpu.Kernels, context, rows);
                long parts = (long)rows * heads * plan.Splits;
                int maxTokens = cache.MaxBlocks * cache.BlockTokens;
                using var output = device.Allocate((long)rows * heads * hd * 4);
                using var partOut = device.Allocate(parts * hd * 4);
                using var partMl = device.Allocate(parts * 8);
                using var counters = device.Allocate((long)rows * kvHeads * 4);
                using var covered = DeviceData.Upload(Enumerable.Repeat(context, kvHeads).ToArray());
                using var max = device.Allocate((long)kvHeads * maxTokens * 4);
                using var sum = device.Allocate((long)kvHeads * maxTokens * 4);
                counters.Fill32(0);
                var (desc, blocks, tokenCounts) = cache.LayerTables(0);
                var k = cache.PagedKernels;
                void Attention() => k.Attention(q.Pointer, cache.PoolPointer, desc, blocks, tokenCounts, output.Pointer, partOut.Pointer, partMl.Pointer,
                    counters.Pointer, rows, heads, kvHeads, hd, cache.MaxBlocks, cache.BlockTokens, cache.ValueGroup, plan, cache.AttentionKernel);
                var target = new CudaPagedKernels.StatsTarget(cache.PoolPointer, desc, blocks, tokenCounts, covered.Pointer, max.Pointer, sum.Pointer,
                    cache.MaxBlocks, maxTokens, cache.BlockTokens, cache.ValueGroup);
                double attention = Time(timer, Attention);
                Attention(); // part_ml of these rows
                double fresh = Time(timer, () =>
                {
                    max.Fill32(0);
                    sum.Fill32(0);
                    k.Statistics(q.Pointer, partMl.Pointer, plan.Splits, target, rows, 0, 0, heads, kvHeads, hd, context);
                });
                var newMax = max.Download<float>();
                var newSum = sum.Download<float>();
                string before = "", speedup = "", agree = "";
                if (old != null)
                {
                    int splits = Math.Clamp(context / 512 + 1, 1, 32), slice = 256 / group;
                    using var part = device.Allocate((long)kvHeads * splits * 256 * 8);
                    float scale = 1f / MathF.Sqrt(hd);
                    double oldMs = Time(timer, () =>
                    {
                        max.Fill32(0);
                        sum.Fill32(0);
                        for (int row0 = 0; row0 < rows; row0 += slice)
                        {
                            int n = Math.Min(slice, rows - row0);
                            var grid = new Dim3((uint)splits, (uint)kvHeads);
                            old["paged_stats_lse"].Launch(grid, 128, 0, q.Pointer, cache.PoolPointer, desc, blocks, tokenCounts, part.Pointer, Arg.Int(n),
                                Arg.Int(row0), Arg.Int(rows), Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(hd), Arg.Int(cache.BlockTokens), Arg.Int(cache.ValueGroup),
                                Arg.Int(cache.MaxBlocks), Arg.Float(scale));
                            old["paged_stats_accumulate"].Launch(grid, 128, 0, q.Pointer, cache.PoolPointer, desc, blocks, tokenCounts, covered.Pointer,
                                part.Pointer, max.Pointer, sum.Pointer, Arg.Int(n), Arg.Int(row0), Arg.Int(rows), Arg.Int(0), Arg.Int(0), Arg.Int(heads),
                                Arg.Int(kvHeads), Arg.Int(hd), Arg.Int(cache.BlockTokens), Arg.Int(cache.ValueGroup), Arg.Int(cache.MaxBlocks), Arg.Int(maxTokens),
                                Arg.Float(scale));
                        }
                    }, repeats: rows * (long)context > 16_000_000 ? 1 : 3);
                    double maxErr = Compare.RelativeError(newMax, max.Download<float>().Select(v => (double)v).ToArray());
                    double sumErr = Compare.RelativeError(newSum, sum.Download<float>().Select(v => (double)v).ToArray());
                    (before, speedup, agree) = ($"{oldMs:F3} ms", $"{oldMs / fresh:F1}x", $"{maxErr:E1}, {sumErr:E1}");
                }
                log.WriteLine($"| {context} | {rows} | {attention:F3} ms | {fresh:F3} ms | {before} | {speedup} | {agree} |");
            }
    }

    /// <summary>Milliseconds of <paramref name="work"/> on the stream: one warm-up, then the mean of <paramref name="repeats"/>.</summary>
    private static double Time(CudaTimer timer, Action work, int repeats = 3)
    {
        work();
        timer.Start();
        for (int i = 0; i < repeats; i++) work();
        return timer.StopMilliseconds() / repeats;
    }
}
