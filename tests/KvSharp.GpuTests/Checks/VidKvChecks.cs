using static KvSharp.GpuTests.Checks.DeviceData;
using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Quantization;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;
using System.Runtime.InteropServices;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// VidKV blocks in the device paged cache (<see cref="CudaPagedKvCache"/> after an upload, read by the VidKV attention kernel):
/// attention over caches mixing VidKV blocks (full and partial, after the CPU's eviction) with F16/INT4/INT2 blocks and the
/// F32 residual, heads of unequal lengths, against float64 attention over the CPU codec's decoded K/V and against the CPU
/// cache's own VidKV attention; the transformer over an uploaded VidKV-pressed cache against the CPU engine; and the refusal
/// of what the device does not do with VidKV blocks. Fresh random inputs every run; outputs poisoned with NaN.
/// </summary>
public static class VidKvChecks
{
    private static CudaDevice Dev => CudaDevice.Shared;

    /// <summary>
    /// A CPU cache of random tokens (F16 blocks) whose heads get: some tokens re-quantized to INT4/INT2 (some heads), the
    /// oldest whole blocks re-encoded as VidKV (the vidkv press, <paramref name="outliers"/> of the channels, <paramref name="salient"/>
    /// tokens a block; a random number of newest tokens left), then a random share of tokens evicted (partial VidKV blocks,
    /// unequal head lengths).
    /// </summary>
    private static PagedKvCache MixedCache(ModelConfig c, int length, double outliers, int salient, RandomData rnd)
    {
        var cache = PagedChecks.CpuCache(c, KvFormat.F16, length, rnd, evict: false);
        var (keys, values) = new VidKvPress(outliers, salient).Layouts(cache.Options.BlockTokens, c.HeadDim);
        for (int l = 0; l < c.NumLayers; l++)
            for (int g = 0; g < c.NumKvHeads; g++)
            {
                int n = cache.Positions(l, g).Count;
                if (rnd.Next(2) == 0)
                    cache.Requantize(l, g, Enumerable.Range(0, n).Select(i => (i / 16 + rnd.Next(3)) % 4 == 0).ToArray(), rnd.Next(2) == 0 ? KvFormat.Int4 : KvFormat.Int2, KvFormat.Int4);
                int vid = Math.Max(0, (n - rnd.Next(48)) / 32 * 32);
                var select = new bool[n];
                select.AsSpan(0, vid).Fill(true);
                if (vid > 0) cache.RequantizeToLayouts(l, g, select, keys, values);
                double share = rnd.Next(40) / 100.0;
                cache.Evict(l, g, Enumerable.Range(0, n).Select(_ => rnd.Next(1000) < share * 1000).ToArray());
            }
        return cache;
    }

    /// <summary>
    /// Attention over uploaded mixed VidKV caches: groups 1/2/4/8, head dims 64/128, outlier shares 0.5 and 0.25, 0-3 salient
    /// tokens, 1 and 3 query rows, the planned split and few blocks per split, against float64 attention over the CPU codec's
    /// decoded rows (1e-4) and, for one row, against <see cref="PagedKvCache.Attend"/> (the CPU's VidKV attention).
    /// </summary>
    public static string Attention()
    {
        double worst = 0, worstCpu = 0;
        int caches = 0, vidBlocks = 0, partial = 0;
        foreach (var (heads, kvHeads, hd, outliers) in new[] { (16, 4, 128, 0.5), (8, 8, 64, 0.25), (16, 2, 128, 0.25), (8, 4, 64, 0.5) })
        {
            var rnd = new RandomData();
            var c = PagedChecks.Shape(heads, kvHeads, hd);
            int length = 150 + rnd.Next(150), salient = rnd.Next(4);
            using var cpu = MixedCache(c, length, outliers, salient, rnd);
            using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, length + 8);
            string what = $"VidKV H{heads}/KV{kvHeads} hd{hd} outliers {outliers} salient {salient} len{length} (seed {rnd.Seed})";
            if (!gpu.HoldsVidKv || gpu.AttentionKernel != PagedAttentionKernel.VidKv)
                throw new CheckFailedException($"{what}: the upload holds VidKV blocks but the cache reports {gpu.HoldsVidKv} / {gpu.AttentionKernel}");
            const int layer = 1;
            foreach (var e in Enumerable.Range(0, kvHeads).SelectMany(g => cpu.ReadStore(layer, g).Blocks).Where(e => e.KeyLayout.Format == KvFormat.VidKvKey))
            {
                vidBlocks++;
                if (e.Count < e.KeyLayout.Tokens) partial++;
            }
            var (desc, blocks, tokens) = gpu.LayerTables(layer);
            foreach (int rows in new[] { 1, 3 })
            {
                var q = rnd.Floats(rows * heads * hd, 2f);
                var expected = PagedChecks.Reference(g => PagedChecks.StorageRows(cpu, layer, g, hd), c, q, rows);
                double[]? cpuAttention = null;
                if (rows == 1)
                {
                    var o = new float[heads * hd];
                    cpu.Attend(layer, q, 1, cpu.Length - 1, o);
                    cpuAttention = [.. o.Select(x => (double)x)];
                }
                using var dq = Upload(q);
                var planned = gpu.PlanAttention(null!, length, rows);
                int few = 1;
                while ((gpu.MaxBlocks + few - 1) / few > few * gpu.BlockTokens) few++;
                var one = new CudaKernels.AttentionPlan(few, (gpu.MaxBlocks + few - 1) / few,
                    CudaPagedKernels.SharedBytes(heads / kvHeads, hd, gpu.BlockTokens, few, PagedAttentionKernel.VidKv));
                foreach (var plan in new[] { planned, one })
                {
                    using var po = Poisoned((long)rows * heads * plan.Splits * hd * 4);
                    using var pml = Poisoned((long)rows * heads * plan.Splits * 8);
                    using var counters = Dev.Allocate(rows * kvHeads * 4L);
                    counters.Fill32(0);
                    for (int launch = 0; launch < 2; launch++)
                    {
                        using var dout = Poisoned((long)rows * heads * hd * 4);
                        gpu.PagedKernels.Attention(dq.Pointer, gpu.PoolPointer, desc, blocks, tokens, dout.Pointer, po.Pointer, pml.Pointer, counters.Pointer,
                            rows, heads, kvHeads, hd, gpu.MaxBlocks, gpu.BlockTokens, gpu.ValueGroup, plan, PagedAttentionKernel.VidKv, vid: gpu.VidKvTables);
                        var got = Result(dout, rows * heads * hd);
                        Compare.Relative($"{what} rows{rows} splits{plan.Splits}", got, expected, 1e-4);
                        worst = Math.Max(worst, Compare.RelativeError(got, expected));
                        if (cpuAttention != null)
                        {
                            Compare.Relative($"{what} vs the CPU cache's attention, splits{plan.Splits}", got, cpuAttention, 1e-4);
                            worstCpu = Math.Max(worstCpu, Compare.RelativeError(got, cpuAttention));
                        }
                    }
                }
            }
            caches++;
        }
        if (vidBlocks == 0 || partial == 0) throw new CheckFailedException($"the caches held {vidBlocks} VidKV key blocks, {partial} partial: nothing to check");
        return $"{caches} mixed caches ({vidBlocks} VidKV block pairs in the checked layer, {partial} partial), groups 1/2/4/8, hd 64/128, rows 1 and 3, two splits: " +
            $"worst rel err {worst:E2} vs float64 over the CPU codec's rows, {worstCpu:E2} vs the CPU cache's VidKV attention";
    }

    /// <summary>
    /// The transformer over an uploaded cache the vidkv press compressed (F32 options, 8 newest tokens left as they were):
    /// the next tokens' logits (teacher-forced with the CPU's greedy tokens, 12 steps, the appends filling and encoding an F32
    /// block on the device) against the CPU engine over its own copy of the compressed cache.
    /// </summary>
    public static string TransformerMatchesCpu()
    {
        var rnd = new RandomData();
        var report = new List<string>();
        foreach (int hd in new[] { 64, 128 })
        {
            var config = PagedChecks.Shape(8, 2, hd) with { NumLayers = 2, HiddenSize = 8 * hd, IntermediateSize = 768, RopeTheta = 10000, RopeStyle = RopeStyle.HalfSplit };
            using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
            using var gpu = new CudaTransformer(Dev, weights, DeviceWeightType.F32);
            var cpu = new Transformer(weights);
            var prompt = Enumerable.Range(0, 90).Select(_ => rnd.Next(config.VocabSize)).ToArray();
            const int steps = 12;
            var options = new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = prompt.Length + steps + 1 };
            using var cpuCache = new PagedKvCache(config, options);
            var logits = cpu.Forward(prompt, cpuCache, LogitsMode.Last);
            new VidKvPress(0.5, 2, residual: 8).Compress(new PressContext(cpu, cpuCache, prompt));
            using var cache = CudaPagedKvCache.Upload(Dev, config, cpuCache, prompt.Length + steps + 1);
            double worst = 0;
            int token = ArgMax(logits);
            for (int i = 0; i < steps; i++)
            {
                var expected = cpu.Forward([token], cpuCache);
                var got = gpu.Forward([token], cache, LogitsMode.Last);
                Compare.Relative($"VidKV hd{hd} step {i} logits (seed {rnd.Seed})", got, expected.Select(x => (double)x).ToArray(), 1e-3);
                worst = Math.Max(worst, Compare.RelativeError(got, expected.Select(x => (double)x).ToArray()));
                token = ArgMax(expected);
            }
            report.Add($"hd{hd}: {steps} steps, worst logits rel err {worst:E2}");
        }
        return string.Join("; ", report) + $" (seed {rnd.Seed})";
    }

    /// <summary>
    /// VidKV encoded on the device (<see cref="CudaPagedKvCache.EncodeVidKv"/>, the vidkv press) against the CPU codec: CPU
    /// caches of random tokens (F16, F32 and INT4 blocks; keys with per-channel offsets, so the outlier ranking has structure),
    /// uploaded, then each head's oldest whole blocks (all but a random residual) encoded as VidKV on both engines from the same
    /// stored blocks: every block pair byte for byte the CPU's (<c>RequantizeToLayouts</c> with the press's layouts), the
    /// residual rows unchanged; head dimensions 128 and 64, outlier shares 0.5/0.25/1, 0-3 salient tokens. Also the refusal of
    /// blocks smaller than their VidKV encoding (INT2 with every channel an outlier).
    /// </summary>
    public static string EncodeMatchesCpu()
    {
        int blocks = 0;
        var cases = new List<string>();
        foreach (var (hd, format, outliers, salient) in new[]
        {
            (128, KvFormat.F16, 0.5, 2), (128, KvFormat.F32, 0.25, 0), (64, KvFormat.Int4, 0.5, 3), (64, KvFormat.F16, 1.0, 1),
        })
        {
            var rnd = new RandomData();
            var c = PagedChecks.Shape(8, 2, hd);
            int length = 100 + rnd.Next(120), residual = rnd.Next(3) * 8;
            using var cpu = PagedChecks.CpuCache(c, format, length, rnd, evict: false);
            using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, length + 64);
            var (keys, values) = new VidKvPress(outliers, salient, residual).Layouts(cpu.Options.BlockTokens, hd);
            for (int l = 0; l < c.NumLayers; l++)
                for (int g = 0; g < c.NumKvHeads; g++)
                {
                    // VidKvPress.Compress's selection: the oldest whole blocks but the residual (a fresh cache: position order).
                    int n = cpu.Positions(l, g).Count, quantized = Math.Max(0, (n - residual) / 32 * 32);
                    var select = new bool[n];
                    select.AsSpan(0, quantized).Fill(true);
                    if (quantized > 0) cpu.RequantizeToLayouts(l, g, select, keys, values);
                }
            int encoded = gpu.EncodeVidKv(keys, values, residual);
            string what = $"vidkv encode {format} hd{hd} outliers {outliers} salient {salient} residual {residual}, {length} tokens (seed {rnd.Seed})";
            for (int l = 0; l < c.NumLayers; l++)
                for (int g = 0; g < c.NumKvHeads; g++)
                    blocks += SameBlocksByPosition($"{what} layer {l} head {g}", cpu.ReadStore(l, g), gpu.ReadHead(l, g), hd);
            if (!gpu.HoldsVidKv || gpu.AttentionKernel != PagedAttentionKernel.VidKv) throw new CheckFailedException($"{what}: the cache does not attend through the VidKV kernel");
            cases.Add($"{format} hd{hd} ({encoded} encoded)");
        }
        var small = PagedChecks.Shape(8, 2, 128);
        var refusalRnd = new RandomData();
        using var int2 = PagedChecks.CpuCache(small, KvFormat.Int2, 96, refusalRnd, evict: false);
        using var int2Gpu = CudaPagedKvCache.Upload(Dev, small, int2, 160);
        var (k2, v2) = new VidKvPress(1.0, 2).Layouts(32, 128);
        string refusal;
        try
        {
            int2Gpu.EncodeVidKv(k2, v2, 0);
            throw new CheckFailedException("INT2 blocks smaller than their VidKV encoding were encoded in place");
        }
        catch (KvSharpException e) when (e.Message.Contains("smaller than its VidKV encoding", StringComparison.Ordinal))
        {
            refusal = $"INT2 blocks: \"{e.Message}\"";
        }
        return $"{blocks} block pairs byte-identical to the CPU codec's ({string.Join(", ", cases)}); {refusal}";
    }

    /// <summary>
    /// What the device does not do with VidKV blocks is refused with a message naming it: VidKV options (the device does not
    /// encode VidKV blocks), the upload of a cache whose appends would be VidKV, eviction, re-quantization and statistics over a
    /// cache holding VidKV blocks, and another attention kernel for it.
    /// </summary>
    public static string Refusals()
    {
        var c = PagedChecks.Shape(8, 2, 128);
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.VidKvKey, ValueFormat = KvFormat.VidKvValue, MaxTokens = 128 };
        var refusals = new List<string> { PagedChecks.Refusal("new cache with VidKV options", () => new CudaPagedKvCache(Dev, c, options, 128).Dispose()) };
        var rnd = new RandomData();
        using (var vidOptions = new PagedKvCache(c, options))
        {
            int row = c.NumKvHeads * c.HeadDim;
            for (int l = 0; l < c.NumLayers; l++) vidOptions.Append(l, rnd.Floats(80 * row, 2f), rnd.Floats(80 * row, 2f), 80);
            refusals.Add(PagedChecks.Refusal("upload of a cache with VidKV options", () => CudaPagedKvCache.Upload(Dev, c, vidOptions, 128).Dispose()));
        }
        using var cpu = MixedCache(c, 120, 0.5, 2, rnd);
        using var gpu = CudaPagedKvCache.Upload(Dev, c, cpu, 128);
        var lengths = gpu.HeadLengths();
        refusals.Add(PagedChecks.Refusal("eviction", () => gpu.Evict([.. lengths.Select(n => new bool[n])])));
        refusals.Add(PagedChecks.Refusal("re-quantization", () => gpu.Requantize([.. lengths.Select(n => new bool[n])], KvFormat.Int4, KvFormat.Int4)));
        refusals.Add(PagedChecks.Refusal("statistics", () => gpu.BeginStatistics(new AttentionStatisticsRequest(0, GroupFold.Mean))));
        try
        {
            gpu.AttentionKernel = PagedAttentionKernel.Wide;
            throw new CheckFailedException("the Wide kernel was accepted for a cache holding VidKV blocks");
        }
        catch (KvSharpException e) when (e.Message.Contains("VidKV", StringComparison.Ordinal)) { refusals.Add($"kernel: \"{e.Message}\""); }
        return string.Join("; ", refusals);
    }

    /// <summary>
    /// A device head against a CPU head of a fresh cache, block by block matched by first position (the device encodes VidKV
    /// in place, in position order; the CPU store puts the blocks a re-quantization leaves alone first): layouts, counts and
    /// bytes, then the residual rows against the float tail.
    /// </summary>
    private static int SameBlocksByPosition(string what, HeadStore cpu, IReadOnlyList<CudaPagedKvCache.DeviceBlock> gpu, int hd)
    {
        var byStart = gpu.Take(gpu.Count - 1).ToDictionary(b => b.Start);
        if (byStart.Count != cpu.Blocks.Count) throw new CheckFailedException($"{what}: {byStart.Count} blocks + residual, expected {cpu.Blocks.Count}");
        foreach (var e in cpu.Blocks)
        {
            if (!byStart.TryGetValue(e.FirstPosition, out var d)) throw new CheckFailedException($"{what}: no device block starts at position {e.FirstPosition}");
            if (d.KeyLayout != e.KeyLayout || d.ValueLayout != e.ValueLayout || d.Count != e.Count)
                throw new CheckFailedException($"{what}: the block at {d.Start} is {d.KeyLayout}/{d.ValueLayout} x{d.Count}, expected {e.KeyLayout}/{e.ValueLayout} x{e.Count}");
            PagedChecks.FirstDifference($"{what} block at {d.Start} keys", d.Keys, e.KeyBytes[..e.KeyLayout.ByteSize]);
            PagedChecks.FirstDifference($"{what} block at {d.Start} values", d.Values, e.ValueBytes[..e.ValueLayout.ByteSize]);
        }
        var r = gpu[^1];
        if (r.Count != cpu.TailCount) throw new CheckFailedException($"{what}: residual of {r.Count}, expected a tail of {cpu.TailCount}");
        PagedChecks.FirstDifference(what + " residual keys", r.Keys.AsSpan(0, r.Count * hd * 4), MemoryMarshal.AsBytes(cpu.TailKeys));
        PagedChecks.FirstDifference(what + " residual values", r.Values.AsSpan(0, r.Count * hd * 4), MemoryMarshal.AsBytes(cpu.TailValues));
        return cpu.Blocks.Count;
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
