using System.Diagnostics;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Bench;

/// <summary>
/// Greedy decode of a dummy-weight model (bfloat16 matrices) over the dense float16 cache and over compressed device paged
/// caches (KVzip keep 0.3 with per-head lengths, KIVI-2, KIVI-4, INT8, FP8, KVzip 0.3 + INT4, VidKV at batch 1; each with the cache's default
/// attention kernel and, in a batch-1-only run, for some the pipelined kernel), at batch 1 and with several sequences decoded together
/// (each its own per-head lengths), against the roofline (weight bytes + KV bytes read per step) / measured
/// device-to-device copy bandwidth. Every cache is synthesized with random K/V at its per-head lengths instead of a
/// prefill and a press (decode reads the same bytes whatever the values); KVzip's per-head lengths are drawn uniformly in
/// [0.1, 0.5] of the context and scaled to average exactly 0.3. A cache the device cannot hold is reported, not timed.
/// </summary>
public static class PagedDecodeBench
{
    /// <summary>A cache to time: its format (null: the dense float16 cache), KVzip keep ratio, attention kernel (null: the cache's default).</summary>
    /// <summary>
    /// A cache to time: its format (null: the dense float16 cache), KVzip keep ratio, attention kernel (null: the cache's default);
    /// with <paramref name="VidKv"/> (outlier share, salient tokens) its blocks are VidKV ones and appends encode in the format.
    /// </summary>
    /// <remarks><paramref name="Programmatic"/>: whether the paged decode kernels launch programmatically (<see cref="CudaPagedKernels.ProgrammaticLaunch"/>);
    /// <paramref name="FusedAppend"/>: whether a batch-1 step appends in the QKV product (<see cref="CudaTransformer.FuseRopeIntoQkv"/>)
    /// or through the separate paged_rope_append launch; <paramref name="Prefetch"/>: whether the attention asks L2 for the output
    /// projection (<see cref="CudaTransformer.PrefetchNextWeights"/>).</remarks>
    private sealed record Variant(string Name, KvFormat? Format, double Keep, PagedAttentionKernel? Kernel = null, (double Outliers, int Salient)? VidKv = null,
        bool Programmatic = true, bool FusedAppend = true, bool Prefetch = false);

    private static readonly Variant[] Variants =
    [
        new("F16 dense (CudaKvCache)", null, 1.0),
        new("F16 dense (CudaKvCache), L2 prefetch", null, 1.0, Prefetch: true),
        new("F16 paged, L2 prefetch", KvFormat.F16, 1.0, PagedAttentionKernel.Pipelined, Prefetch: true),
        new("KVzip 0.3 (F16), L2 prefetch", KvFormat.F16, 0.3, PagedAttentionKernel.Pipelined, Prefetch: true),
        new("KVzip 0.3 + INT4, L2 prefetch", KvFormat.Int4, 0.3, PagedAttentionKernel.Pipelined, Prefetch: true),
        new("KIVI-2 (INT2 K per channel, V per token, g32), L2 prefetch", KvFormat.Int2, 1.0, PagedAttentionKernel.Pipelined, Prefetch: true),
        new("KIVI-4 (INT4, g32), L2 prefetch", KvFormat.Int4, 1.0, PagedAttentionKernel.Pipelined, Prefetch: true),
        new("FP8 E4M3, L2 prefetch", KvFormat.Fp8E4M3, 1.0, PagedAttentionKernel.Pipelined, Prefetch: true),
        new("F16 paged", KvFormat.F16, 1.0, PagedAttentionKernel.TensorCores),
        new("F16 paged", KvFormat.F16, 1.0, PagedAttentionKernel.Pipelined),
        new("F16 paged, plain launches", KvFormat.F16, 1.0, PagedAttentionKernel.TensorCores, Programmatic: false),
        new("F16 paged, plain launches", KvFormat.F16, 1.0, PagedAttentionKernel.Pipelined, Programmatic: false),
        new("F16 paged, separate append", KvFormat.F16, 1.0, PagedAttentionKernel.Pipelined, FusedAppend: false),
        new("KVzip 0.3 (F16), separate append", KvFormat.F16, 0.3, PagedAttentionKernel.Pipelined, FusedAppend: false),
        new("KIVI-2 (INT2 K per channel, V per token, g32), separate append", KvFormat.Int2, 1.0, PagedAttentionKernel.Pipelined, FusedAppend: false),
        new("FP8 E4M3, separate append", KvFormat.Fp8E4M3, 1.0, PagedAttentionKernel.TensorCores, FusedAppend: false),
        new("KVzip 0.3 + INT4, separate append", KvFormat.Int4, 0.3, PagedAttentionKernel.Pipelined, FusedAppend: false),
        new("KVzip 0.3 (F16)", KvFormat.F16, 0.3, PagedAttentionKernel.TensorCores),
        new("KVzip 0.3 (F16)", KvFormat.F16, 0.3, PagedAttentionKernel.Pipelined),
        new("KIVI-2 (INT2 K per channel, V per token, g32)", KvFormat.Int2, 1.0, PagedAttentionKernel.TensorCores),
        new("KIVI-2 (INT2 K per channel, V per token, g32)", KvFormat.Int2, 1.0, PagedAttentionKernel.Pipelined),
        new("KIVI-4 (INT4, g32)", KvFormat.Int4, 1.0, PagedAttentionKernel.TensorCores),
        new("KIVI-4 (INT4, g32)", KvFormat.Int4, 1.0, PagedAttentionKernel.Pipelined),
        new("INT8 (g32)", KvFormat.Int8, 1.0, PagedAttentionKernel.TensorCores),
        new("INT8 (g32)", KvFormat.Int8, 1.0, PagedAttentionKernel.Pipelined),
        new("FP8 E4M3", KvFormat.Fp8E4M3, 1.0, PagedAttentionKernel.TensorCores),
        new("FP8 E4M3", KvFormat.Fp8E4M3, 1.0, PagedAttentionKernel.Pipelined),
        new("KVzip 0.3 + INT4", KvFormat.Int4, 0.3, PagedAttentionKernel.TensorCores),
        new("KVzip 0.3 + INT4", KvFormat.Int4, 0.3, PagedAttentionKernel.Pipelined),
        new("VidKV (K: 0.5 outlier channels INT2 + 1-bit DFT signs; V: ternary + 2 salient INT4 rows)", KvFormat.F16, 1.0, null, (0.5, 2)),
    ];

    /// <summary>
    /// Several sequences together: the batch-1 caches (both tensor-core kernels) but INT8 and VidKV, which issue 7 does not
    /// ask for at batch 8.
    /// </summary>
    private static readonly Variant[] BatchVariants = [.. Variants.Where(v => v.Format != KvFormat.Int8 && v.VidKv == null && v.FusedAppend)];

    /// <summary>
    /// Times every variant whose name or kernel contains one of the '|'-separated parts of <paramref name="only"/> (all when
    /// empty) at every context and batch size and writes the log and a result table to <paramref name="log"/>. Each row is
    /// the median (the upper one of an even count) of <paramref name="repeats"/> timed runs of <paramref name="steps"/>
    /// steps, after a heat-up (<see cref="DecodeBench.TimeSteps"/>): on an H200 the dense float16 step at 1 × 128K
    /// spread 7.87-9.39 ms over one process's runs when timed in the board's power-cap transient after idle (stops 35-36);
    /// more runs steady the reference the compressed rows are divided by, and the stricter column does not depend on it alone.
    /// </summary>
    internal static void Run(string configPath, IReadOnlyList<int> contexts, IReadOnlyList<int> batches, int steps, TextWriter log, string only = "",
        PipelinedBlockClaims claims = PipelinedBlockClaims.Measured, bool narrowFfn = true, bool foldAppend = true, bool earlyTables = true,
        int repeats = 3)
    {
        if (repeats < 1) throw new ArgumentOutOfRangeException(nameof(repeats), repeats, "at least one timed run a row");
        var (device, bandwidth, config, gpu) = DecodeBench.OpenDummyModel(configPath, log);
        CudaPagedKernels.For(device).BlockClaims = claims;
        CudaPagedKernels.For(device).FuseBatchAppend = foldAppend;
        CudaPagedKernels.For(device).EarlyBatchTables = earlyTables;
        gpu.Kernels.NarrowFfnActivations = narrowFfn;
        using var _ = gpu;
        long weightBytes = gpu.WeightBytesReadPerToken;
        using var timer = new CudaTimer(device);
        var rows = new List<string>();
        foreach (int batch in batches)
            foreach (int context in contexts)
            {
                // The group's rows are written once all of them are timed: the stricter reference (the fastest full F16
                // step of any cache and kernel) may be timed after the compressed rows it divides.
                var timed = new List<TimedRow>();
                // What the dense float16 cache reads per step, measured or not (it may not fit): every sequence's K and V.
                long denseKv = (long)batch * context * 2 * config.NumLayers * config.NumKvHeads * config.HeadDim * 2;
                foreach (var v in (batches.Count == 1 && batch == 1 ? Variants : BatchVariants)
                    .Where(v => only.Split('|').Any(o => $"{v.Name} {v.Kernel}".Contains(o, StringComparison.Ordinal))))
                {
                    int capacity = context + (repeats + 1) * steps + 8;
                    string what = $"batch {batch}, context {context}, {v.Name}";
                    DeviceKvCache cache;
                    try
                    {
                        cache = Create(gpu, config, v, context, capacity, batch);
                    }
                    catch (KvSharpException e)
                    {
                        // Out of device memory, or a pool past the 64 GiB its 32-bit 16-byte offsets address.
                        log.WriteLine($"{what}: does not fit ({e.Message}; {device.FreeMemory / 1e9:F1} GB free)");
                        timed.Add(new TimedRow(v, "", Estimate(config, v, context, batch), double.NaN));
                        continue;
                    }
                    var pagedKernels = (cache as CudaPagedKvCache)?.PagedKernels;
                    if (pagedKernels != null) pagedKernels.ProgrammaticLaunch = v.Programmatic; // before the graph is captured
                    gpu.FuseRopeIntoQkv = v.FusedAppend;
                    gpu.PrefetchNextWeights = v.Prefetch;
                    using (cache)
                    {
                        long kvBytes = cache.BytesReadPerToken;
                        gpu.BeginDecode(cache, Enumerable.Repeat(1000, batch).ToArray());
                        gpu.EnqueueDecodeSteps(cache, steps); // warm-up
                        device.Synchronize();
                        cache.CheckDeviceState();
                        var (ms, runs) = DecodeBench.TimeSteps(gpu, cache, timer, steps, repeats, log);
                        cache.CheckDeviceState();
                        string kernel = cache is CudaPagedKvCache paged ? paged.AttentionKernel.ToString() : "";
                        timed.Add(new TimedRow(v, kernel, kvBytes, ms));
                        log.WriteLine($"{what} {kernel}: {ms:F3} ms/step (runs {runs}), KV read {kvBytes / 1e9:F3} GB, device {cache.ByteCount / 1e9:F1} GB");
                    }
                    if (pagedKernels != null) pagedKernels.ProgrammaticLaunch = true;
                    gpu.FuseRopeIntoQkv = true;
                    gpu.PrefetchNextWeights = false;
                }
                rows.AddRange(TableRows(timed, batch, context, weightBytes, denseKv, bandwidth));
            }
        log.WriteLine();
        log.WriteLine($"weights read per step: {weightBytes / 1e9:F3} GB");
        log.WriteLine("| batch | context | cache | kernel | KV GB read/step | ms/step | tokens/s (all sequences) | roofline tokens/s | % of roofline | speedup vs F16 dense | predicted by bytes | of predicted | of predicted, fastest F16 |");
        log.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var r in rows) log.WriteLine(r);
    }

    /// <summary>One timed (or, with a NaN time, not fitting) cache of a batch size and context: its KV bytes read a step, estimated when it does not fit.</summary>
    private sealed record TimedRow(Variant Variant, string Kernel, long KvBytes, double Ms);

    /// <summary>
    /// The result-table rows of one batch size and context. Issue 7's target for a compressed cache is its speedup over
    /// the float16 cache equal to the factor its bytes predict (100%); "of predicted" divides by the dense float16 cache
    /// (CudaKvCache) of this run, as every table before stop 36 did, "of predicted, fastest F16" by the fastest step over
    /// all the cache's tokens in float16 of this run (dense or paged, any kernel or launch variant): on an H200 the paged
    /// float16 step is up to 13% faster than the dense one at batch 8, where the first column would flatter every
    /// compressed row (stop 36).
    /// </summary>
    private static IEnumerable<string> TableRows(IReadOnlyList<TimedRow> timed, int batch, int context, long weightBytes, long denseKv, double bandwidth)
    {
        double denseMs = timed.FirstOrDefault(t => t.Variant.Format == null && !t.Variant.Prefetch && !double.IsNaN(t.Ms))?.Ms ?? 0;
        var fullF16 = timed.Where(t => IsFullF16(t.Variant) && !double.IsNaN(t.Ms)).Select(t => t.Ms).ToList();
        double fastestF16Ms = fullF16.Count > 0 ? fullF16.Min() : 0;
        foreach (var t in timed)
        {
            double predicted = (double)(weightBytes + denseKv) / (weightBytes + t.KvBytes);
            if (double.IsNaN(t.Ms))
            {
                yield return $"| {batch} | {context} | {t.Variant.Name} | | does not fit | | | | | | {predicted:F2}x | | |";
                continue;
            }
            double rooflineMs = (weightBytes + t.KvBytes) / bandwidth * 1e3;
            string speedup = denseMs > 0 ? $"{denseMs / t.Ms:F2}x" : "—";
            string ofPredicted = denseMs > 0 ? $"{denseMs / t.Ms / predicted * 100:F1}%" : "—";
            string ofFastest = fastestF16Ms > 0 ? $"{fastestF16Ms / t.Ms / predicted * 100:F1}%" : "—";
            yield return $"| {batch} | {context} | {t.Variant.Name} | {t.Kernel} | {t.KvBytes / 1e9:F3} | {t.Ms:F3} | {batch * 1000 / t.Ms:F1} | {batch * 1000 / rooflineMs:F1} | {rooflineMs / t.Ms * 100:F0}% | {speedup} | {predicted:F2}x | {ofPredicted} | {ofFastest} |";
        }
    }

    /// <summary>Whether a variant holds every token of the context in float16 (the dense cache or a full paged F16 one).</summary>
    private static bool IsFullF16(Variant v) => v.Keep >= 1 && v.VidKv == null && (v.Format == null || v.Format == KvFormat.F16);

    /// <summary>KV bytes a variant would read per step (its blocks' exact sizes at the mean kept share), for a cache that does not fit.</summary>
    private static long Estimate(ModelConfig config, Variant v, int context, int batch)
    {
        var f = v.Format ?? KvFormat.F16;
        var (keys, values) = new PagedKvCacheOptions { KeyFormat = f, ValueFormat = f }.Layouts(config.HeadDim);
        double perToken = (keys.ByteSize + values.ByteSize) / (double)keys.Tokens;
        return (long)(perToken * context * v.Keep * batch * config.NumLayers * config.NumKvHeads);
    }

    private static DeviceKvCache Create(CudaTransformer gpu, ModelConfig config, Variant v, int context, int capacity, int batch)
    {
        if (v.Format is not { } f)
        {
            var dense = gpu.CreateCache(capacity, batch);
            try
            {
                dense.FillRandom(gpu.Kernels, context, seed: (uint)context);
            }
            catch
            {
                dense.Dispose();
                throw;
            }
            return dense;
        }
        int heads = config.NumLayers * batch * config.NumKvHeads;
        var rnd = new Random(context);
        var weights = Enumerable.Range(0, heads).Select(_ => v.Keep >= 1 ? 1.0 : 0.1 + 0.4 * rnd.NextDouble()).ToArray();
        double scale = v.Keep >= 1 ? 1.0 : v.Keep * heads / weights.Sum();
        var lengths = weights.Select(w => (int)Math.Min(context, Math.Round(context * w * scale))).ToArray();
        var options = new PagedKvCacheOptions { KeyFormat = f, ValueFormat = f, MaxTokens = capacity };
        var vidKv = v.VidKv is { } p
            ? CudaPagedKvCache.VidKvTemplate.Random(config.HeadDim, options.BlockTokens, (int)Math.Round(p.Outliers * config.HeadDim), p.Salient, context)
            : null;
        var cache = CudaPagedKvCache.Synthesize(gpu.Device, gpu.Kernels, config, options, lengths, context, capacity, seed: (uint)context, batch, vidKv);
        if (v.Kernel is { } kernel) cache.AttentionKernel = kernel;
        return cache;
    }
}
