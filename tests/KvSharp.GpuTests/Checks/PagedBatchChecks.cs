using static KvSharp.GpuTests.Checks.DeviceData;
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
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// The device paged KV cache holding several sequences (<see cref="CudaPagedKvCache"/> with a batch): one attention launch
/// over every sequence's heads against float64 attention per sequence, a per-sequence eviction that leaves the other
/// sequences' blocks alone, greedy decode of 8 sequences in one graph step equal to each sequence decoded alone, and
/// SnapKV on the device pressing one sequence of a batch as the CPU press does. The sequences differ in length, per-head
/// lengths and block formats.
/// </summary>
public static class PagedBatchChecks
{
    private static CudaDevice Dev => CudaDevice.Shared;
    private static CudaPagedKernels Kernels => CudaPagedKernels.For(Dev);

    /// <summary>
    /// Batch attention (row s = sequence s) over 3 and 8 sequences of unequal lengths, each head evicted to its own length,
    /// mixed-format sequences (F16 blocks with tokens re-quantized to INT2/INT4, FP8/ternary, binary/INT8, BF16/F32) beside
    /// plain F16 ones, and a quantized batch: every kernel that reads the shape, the planned split and few blocks per split,
    /// against float64 attention of each sequence's query row over its CPU cache's decoded rows. Then one sequence is evicted
    /// on the device: the other sequences' blocks are byte for byte what they were, the evicted one holds the kept count,
    /// and batch attention matches float64 attention over the blocks read back.
    /// </summary>
    public static string Attention()
    {
        double worst = 0;
        int launches = 0;
        foreach (var (heads, kvHeads, hd) in new[] { (16, 4, 128), (8, 8, 64), (16, 2, 128), (8, 4, 64) })
            foreach (var (batch, quantized) in new[] { (3, (KvFormat?)KvFormat.Int2), (8, (KvFormat?)null) })
            {
                var rnd = new RandomData();
                var c = PagedChecks.Shape(heads, kvHeads, hd);
                var lengths = Enumerable.Range(0, batch).Select(_ => 60 + rnd.Next(250)).ToArray();
                // Without a quantized format: mixed sequences (null) beside plain F16 ones, which share the F16 options.
                var cpus = lengths.Select((n, s) => PagedChecks.CpuCache(c, quantized ?? (s % 2 == 0 ? null : KvFormat.F16), n, rnd, evict: true)).ToList();
                try
                {
                    using var gpu = CudaPagedKvCache.Upload(Dev, c, cpus, lengths.Max() + 8);
                    const int layer = 1;
                    string what = $"batch {batch} H{heads}/KV{kvHeads} hd{hd} {quantized?.ToString() ?? "mixed"} lengths {string.Join(",", lengths)} (seed {rnd.Seed})";
                    var q = rnd.Floats(batch * heads * hd, 2f);
                    var expected = PerSequence(c, q, batch, s => g => PagedChecks.StorageRows(cpus[s], layer, g, hd));
                    foreach (var kernel in PagedChecks.Kernels(gpu))
                    {
                        gpu.AttentionKernel = kernel;
                        worst = Math.Max(worst, CheckBatchAttention(gpu, layer, q, expected, lengths.Max(), $"{what} {kernel}", ref launches));
                    }

                    // Evict sequence 1 alone; the others must not change.
                    const int evicted = 1;
                    var before = Enumerable.Range(0, batch).Where(s => s != evicted)
                        .SelectMany(s => Enumerable.Range(0, c.NumLayers * kvHeads).Select(i => (s, i, Blocks: gpu.ReadHead(i / kvHeads, i % kvHeads, s)))).ToList();
                    var stored = gpu.HeadLengths();
                    var drop = Enumerable.Range(0, c.NumLayers * kvHeads)
                        .Select(i => Enumerable.Range(0, stored[gpu.HeadIndex(i / kvHeads, evicted, i % kvHeads)]).Select(_ => rnd.Next(10) < 4).ToArray()).ToArray();
                    gpu.Evict(evicted, drop);
                    var after = gpu.HeadLengths();
                    for (int i = 0; i < drop.Length; i++)
                    {
                        int kept = drop[i].Count(d => !d), h = gpu.HeadIndex(i / kvHeads, evicted, i % kvHeads);
                        if (after[h] != kept) throw new CheckFailedException($"{what}: evicted head {i} holds {after[h]} tokens, expected {kept}");
                    }
                    foreach (var (s, i, blocks) in before)
                        PagedChecks.SameDeviceHead($"{what}: sequence {s} head {i} after evicting sequence {evicted}", gpu.ReadHead(i / kvHeads, i % kvHeads, s), blocks, hd, "before");
                    var expectedAfter = DeviceReference(gpu, layer, q);
                    worst = Math.Max(worst, CheckBatchAttention(gpu, layer, q, expectedAfter, lengths.Max(), $"{what} after evicting sequence {evicted}", ref launches));
                }
                finally
                {
                    foreach (var cpu in cpus) cpu.Dispose();
                }
            }
        return $"{launches} batch launches (3 and 8 sequences of unequal lengths, mixed and INT2 formats, groups 1/2/4/8, hd 64/128, every kernel, two splits, the pipelined kernel's also with block claims), one sequence evicted alone; worst rel err {worst:E2}";
    }

    /// <summary>
    /// The pipelined kernel's per-layer plan (paged_attention_tc.cu, <c>wave_split</c>: the units of one wave, or of whole
    /// waves, handed to the (sequence, KV head) pairs in chunks) over very unequal heads: 4 sequences whose heads keep 0, 1,
    /// 31, 32, 33, 65, 200 or all of 700 tokens (device evict, F16 and INT4 blocks), through the cache's own plan and
    /// through grids of few units (<see cref="CudaPagedKernels.WaveUnits"/> for one wave of pairs + 1, 2 · pairs + 3 and
    /// 5 · pairs units, and for three waves of pairs + 1: long chunks, pairs of 0-1 blocks beside long ones), each with
    /// fixed runs and with block claims (<see cref="CudaPagedKernels.BlockClaims"/>), against float64 attention of each
    /// sequence over its blocks read back. Written for branch gpukvzip8's plan of equal byte
    /// shares across pairs (docs/benchmarks.md: passed on an H200 over that kernel, which was not kept).
    /// </summary>
    public static string UnequalHeads()
    {
        double worst = 0;
        int launches = 0;
        var counts = new[] { 0, 1, 31, 32, 33, 65, 200, 700 };
        foreach (var format in new[] { KvFormat.F16, KvFormat.Int4 })
        {
            var rnd = new RandomData();
            var c = PagedChecks.Shape(16, 4, 128);
            const int batch = 4, length = 700, layer = 1;
            var cpus = Enumerable.Range(0, batch).Select(_ => PagedChecks.CpuCache(c, format, length, rnd, evict: false)).ToList();
            try
            {
                using var gpu = CudaPagedKvCache.Upload(Dev, c, cpus, length + 8);
                gpu.AttentionKernel = PagedAttentionKernel.Pipelined;
                var stored = gpu.HeadLengths();
                // Head h keeps counts[5h mod 8] tokens, a random subset: each count twice among a layer's 16 heads.
                var drop = Enumerable.Range(0, stored.Length).Select(h =>
                {
                    int keep = Math.Min(stored[h], counts[h * 5 % counts.Length]);
                    var kept = Enumerable.Range(0, stored[h]).OrderBy(_ => rnd.Next(1 << 30)).Take(keep).ToHashSet();
                    return Enumerable.Range(0, stored[h]).Select(i => !kept.Contains(i)).ToArray();
                }).ToArray();
                gpu.Evict(drop);
                var lengths = gpu.HeadLengths();
                string what = $"unequal heads {format} batch {batch} layer lengths {string.Join(",", Enumerable.Range(0, batch * c.NumKvHeads).Select(i => lengths[gpu.HeadIndex(layer, i / c.NumKvHeads, i % c.NumKvHeads)]))} (seed {rnd.Seed})";
                var q = rnd.Floats(batch * c.NumHeads * c.HeadDim, 2f);
                var expected = DeviceReference(gpu, layer, q);
                var planned = gpu.PlanAttention(null!, length, batch);
                int pairs = batch * c.NumKvHeads;
                var plans = new List<CudaKernels.AttentionPlan> { planned };
                foreach (var (wave, waves) in new[] { (pairs + 1, 1), (2 * pairs + 3, 1), (5 * pairs, 1), (pairs + 1, 3) })
                    plans.Add(WavePlan(gpu, planned, wave, waves));
                worst = Math.Max(worst, CheckBatchAttention(gpu, layer, q, expected, length, what, ref launches, plans));
            }
            finally
            {
                foreach (var cpu in cpus) cpu.Dispose();
            }
        }
        return $"{launches} pipelined batch launches (heads of 0-700 tokens, F16 and INT4, the cache's plan and grids of few units in one and three waves, each with fixed runs and with block claims); worst rel err {worst:E2}";
    }

    /// <summary>
    /// The pipelined kernel's merge over many splits a head (one sequence, heads of ~100-250 blocks after a random eviction,
    /// F16 and INT2): grids whose units give the longest head ~10, ~50, ~125 live splits (the merge's one-read path, up to
    /// 128) and ~250 (its two-pass path), each against float64.
    /// </summary>
    public static string ManySplits()
    {
        double worst = 0;
        int launches = 0;
        foreach (var format in new[] { KvFormat.F16, KvFormat.Int2 })
        {
            var rnd = new RandomData();
            var c = PagedChecks.Shape(16, 4, 128);
            const int length = 8000, layer = 1;
            using var cpu = PagedChecks.CpuCache(c, format, length, rnd, evict: true);
            using var gpu = CudaPagedKvCache.Upload(Dev, c, [cpu], length + 8);
            gpu.AttentionKernel = PagedAttentionKernel.Pipelined;
            var lengths = gpu.HeadLengths();
            string what = $"many splits {format} head lengths {string.Join(",", Enumerable.Range(0, c.NumKvHeads).Select(g => lengths[gpu.HeadIndex(layer, 0, g)]))} (seed {rnd.Seed})";
            var q = rnd.Floats(c.NumHeads * c.HeadDim, 2f);
            var expected = DeviceReference(gpu, layer, q);
            var planned = gpu.PlanAttention(null!, length, 1);
            var plans = new List<CudaKernels.AttentionPlan> { planned };
            foreach (int wave in new[] { 40, 200, 760, 1100 }) plans.Add(WavePlan(gpu, planned, wave, 1));
            // INT2's key steps folded into the f16 query parts (key_query) cost accuracy over long heads: main's kernel before
            // the per-warp output slices gave 1.7e-4 on this check's INT2 heads of 3.9-6.2K tokens (H100, stop 22).
            worst = Math.Max(worst, CheckBatchAttention(gpu, layer, q, expected, length, what, ref launches, plans, format == KvFormat.Int2 ? 5e-4 : 1e-4));
        }
        return $"{launches} pipelined launches of one sequence (F16 and INT2, heads of ~100-250 blocks, ~10 to ~250 live splits a head); worst rel err {worst:E2}";
    }

    /// <summary>
    /// The batch-1 head merge folded into the output product (<see cref="CudaPagedKernels.MergeProjection"/>): one
    /// sequence's heads (as <see cref="ManySplits"/>: F16 and INT2, ~10 to ~250 live splits a head) merged and multiplied
    /// into a random residual row through bfloat16 and float16 matrices of 1000 rows (a part of the grid past the last
    /// row) and 4096 rows, two launches a plan (the second reads counters the first left): the residual against its value
    /// plus the float64 product of the stored weights and the float64 attention, and the attention output against that
    /// attention.
    /// </summary>
    public static string MergeProjection()
    {
        double worstAttention = 0, worstProduct = 0;
        int launches = 0;
        foreach (var format in new[] { KvFormat.F16, KvFormat.Int2 })
        {
            var rnd = new RandomData();
            var c = PagedChecks.Shape(16, 4, 128);
            const int length = 8000, layer = 1;
            int heads = c.NumHeads, kvHeads = c.NumKvHeads, hd = c.HeadDim, cols = heads * hd;
            using var cpu = PagedChecks.CpuCache(c, format, length, rnd, evict: true);
            using var gpu = CudaPagedKvCache.Upload(Dev, c, [cpu], length + 8);
            gpu.AttentionKernel = PagedAttentionKernel.Pipelined;
            var q = rnd.Floats(heads * hd, 2f);
            var expected = DeviceReference(gpu, layer, q);
            var planned = gpu.PlanAttention(null!, length, 1);
            var plans = new List<CudaKernels.AttentionPlan> { planned };
            foreach (int wave in new[] { 40, 200, 760, 1100 }) plans.Add(WavePlan(gpu, planned, wave, 1));
            var (desc, blocks, tokens) = gpu.LayerTables(layer);
            using var dq = Upload(q);
            foreach (var type in new[] { DeviceWeightType.BF16, DeviceWeightType.F16 })
                foreach (int rows in new[] { 1000, 4096 })
                {
                    var w = rnd.Floats(rows * cols, 0.1f);
                    var (dw, stored) = KernelChecks.Weights(type, w);
                    using var _ = dw;
                    var y0 = rnd.Floats(rows, 1f);
                    var want = new double[rows];
                    for (int r = 0; r < rows; r++)
                    {
                        double acc = y0[r];
                        for (int k = 0; k < cols; k++) acc += stored[(long)r * cols + k] * expected[k];
                        want[r] = acc;
                    }
                    foreach (var plan in plans)
                    {
                        using var po = Poisoned((long)heads * plan.Splits * hd * 4);
                        using var pml = Poisoned((long)heads * plan.Splits * 8);
                        using var counters = Dev.Allocate(kvHeads * 4L);
                        counters.Fill32(0);
                        for (int launch = 0; launch < 2; launch++)
                        {
                            using var dout = Poisoned((long)heads * hd * 4);
                            using var dy = Upload(y0);
                            string what = $"merge projection {format} {type} rows {rows} splits {plan.Splits} launch {launch} (seed {rnd.Seed})";
                            bool projected = gpu.PagedKernels.Attention(dq.Pointer, gpu.PoolPointer, desc, blocks, tokens, dout.Pointer, po.Pointer,
                                pml.Pointer, counters.Pointer, 1, heads, kvHeads, hd, gpu.MaxBlocks, gpu.BlockTokens, gpu.ValueGroup, plan,
                                PagedAttentionKernel.Pipelined, batch: true, projection: new CudaPagedKernels.OutputProjection(dw.Pointer, type, rows, dy.Pointer));
                            if (!projected) throw new CheckFailedException($"{what}: the launch did not fold the product in");
                            var att = Result(dout, heads * hd);
                            var y = Result(dy, rows);
                            // The residual carries the attention's error (INT2's long heads: up to ~2e-4, see ManySplits).
                            double tolerance = format == KvFormat.Int2 ? 5e-4 : 1e-4;
                            Compare.Relative($"{what} attention", att, expected, tolerance);
                            Compare.Relative($"{what} residual", y, want, tolerance);
                            worstAttention = Math.Max(worstAttention, Compare.RelativeError(att, expected));
                            worstProduct = Math.Max(worstProduct, Compare.RelativeError(y, want));
                            launches++;
                        }
                    }
                }
        }
        return $"{launches} launches (F16 and INT2 heads, ~10 to ~250 live splits, bfloat16 and float16 matrices of 1000 and 4096 rows); worst rel err attention {worstAttention:E2}, residual {worstProduct:E2}";
    }

    /// <summary>
    /// The transformer's one-row steps with the output product folded into the head merge against the merge grid and the
    /// product as a kernel of its own (<see cref="CudaPagedKernels.MergeProjection"/> off): models of hd 128 with bfloat16
    /// and float16 weights, two layers over an F16 paged cache and one over an INT4 cache (pipelined attention), the same 24
    /// one-token Forward calls after the same prefill into one cache per path; every step's logits within 1e-4 relative
    /// (the paths differ in their float32 summation order only). One layer for INT4: there a later layer's appended keys
    /// and values depend on the earlier products' sums, and a last-bit difference can move a value across an INT4 rounding
    /// boundary (a two-layer INT4 run under a variant grid of the fold gave 1.01e-4 at step 19, stop 27); one layer's
    /// appends depend on the tokens only.
    /// </summary>
    public static string MergeProjectionInTransformer()
    {
        var rnd = new RandomData();
        double worst = 0;
        int steps = 0;
        foreach (var type in new[] { DeviceWeightType.BF16, DeviceWeightType.F16 })
            foreach (var (format, layers) in new[] { (KvFormat.F16, 2), (KvFormat.Int4, 1) })
            {
                var config = PagedChecks.Shape(8, 2, 128) with { NumLayers = layers, HiddenSize = 1024, IntermediateSize = 768, RopeTheta = 10000, RopeStyle = RopeStyle.HalfSplit };
                using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
                using var gpu = new CudaTransformer(Dev, weights, type);
                var prompt = Enumerable.Range(0, 300).Select(_ => rnd.Next(config.VocabSize)).ToArray();
                var fed = Enumerable.Range(0, 24).Select(_ => rnd.Next(config.VocabSize)).ToArray();
                var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = prompt.Length + fed.Length + 1 };
                var logits = new List<float[]>[2];
                try
                {
                    foreach (bool folded in new[] { true, false })
                    {
                        Kernels.MergeProjection = folded;
                        using var cache = gpu.CreatePagedCache(options, prompt.Length + fed.Length + 1);
                        if (cache.AttentionKernel != PagedAttentionKernel.Pipelined)
                            throw new CheckFailedException($"merge projection {type} {format}: the cache runs the {cache.AttentionKernel} attention, not the pipelined one");
                        gpu.Forward(prompt, cache);
                        var run = logits[folded ? 0 : 1] = [];
                        foreach (int token in fed) run.Add(gpu.Forward([token], cache));
                    }
                }
                finally
                {
                    Kernels.MergeProjection = true;
                }
                for (int i = 0; i < fed.Length; i++)
                {
                    var reference = logits[1][i].Select(v => (double)v).ToArray();
                    Compare.Relative($"merge projection {type} {format} step {i} (seed {rnd.Seed})", logits[0][i], reference, 1e-4);
                    worst = Math.Max(worst, Compare.RelativeError(logits[0][i], reference));
                    steps++;
                }
            }
        return $"{steps} one-token steps (bfloat16 and float16 weights, F16 cache over 2 layers and INT4 over 1) folded = separate; worst logits rel err {worst:E2}";
    }

    /// <summary>
    /// <paramref name="planned"/> over a grid of <paramref name="waves"/> waves of <paramref name="wave"/> units
    /// (<see cref="CudaPagedKernels.WaveUnits"/> for the cache's longest head and rows), its chunk room and shared memory.
    /// </summary>
    private static CudaKernels.AttentionPlan WavePlan(CudaPagedKvCache gpu, CudaKernels.AttentionPlan planned, int wave, int waves)
    {
        var c = gpu.Config;
        var (units, splits, chunk) = CudaPagedKernels.WaveUnits(gpu.MaxBlocks, (long)wave * waves, gpu.Batch, c.NumKvHeads);
        return planned with
        {
            Chunk = chunk,
            Splits = splits,
            SharedBytes = CudaPagedKernels.PipelinedSharedBytes(c.NumHeads / c.NumKvHeads, chunk, planned.RingBytes),
            Units = units / waves,
            Waves = waves,
        };
    }

    /// <summary>The block-claim settings a batch decode runs under: the pipelined kernel's (hd 128) fixed runs and claims; other shapes once.</summary>
    private static PipelinedBlockClaims[] ClaimModes(int hd) => hd == 128 ? [PipelinedBlockClaims.Off, PipelinedBlockClaims.Always] : [PipelinedBlockClaims.Off];

    /// <summary><paramref name="run"/> with <see cref="CudaPagedKernels.BlockClaims"/> at <paramref name="claims"/>, then back at its default.</summary>
    private static T UnderClaims<T>(PipelinedBlockClaims claims, Func<T> run)
    {
        Kernels.BlockClaims = claims;
        try
        {
            return run();
        }
        finally
        {
            Kernels.BlockClaims = PipelinedBlockClaims.Measured;
        }
    }

    private static string ClaimsLabel(PipelinedBlockClaims claims) => claims == PipelinedBlockClaims.Always ? ", block claims" : "";

    /// <summary>Float64 attention of each sequence's query row of <paramref name="q"/> over its heads of <paramref name="layer"/> as the device stores them.</summary>
    private static double[] DeviceReference(CudaPagedKvCache gpu, int layer, float[] q) => PerSequence(gpu.Config, q, gpu.Batch, s => g =>
    {
        var (k, v, _) = PagedChecks.DecodeDeviceHead(gpu.ReadHead(layer, g, s), gpu.Config.HeadDim);
        return (k, v);
    });

    /// <summary>Float64 attention of each sequence's query row (row s of q) over that sequence's heads.</summary>
    private static double[] PerSequence(ModelConfig c, float[] q, int batch, Func<int, Func<int, (float[] K, float[] V)>> headRows)
    {
        int row = c.NumHeads * c.HeadDim;
        var expected = new double[batch * row];
        for (int s = 0; s < batch; s++)
            PagedChecks.Reference(headRows(s), c, q.AsSpan(s * row, row).ToArray(), 1).CopyTo(expected, s * row);
        return expected;
    }

    /// <summary>
    /// One batch launch per plan (<paramref name="plans"/>, or the planned one and few blocks per split), twice each (the
    /// counters are left at zero), into NaN-poisoned outputs, against <paramref name="expected"/> within
    /// <paramref name="tolerance"/> (relative); returns the worst relative error.
    /// </summary>
    private static double CheckBatchAttention(CudaPagedKvCache gpu, int layer, float[] q, double[] expected, int visible, string what, ref int launches,
        IReadOnlyList<CudaKernels.AttentionPlan>? plans = null, double tolerance = 1e-4)
    {
        var c = gpu.Config;
        int heads = c.NumHeads, kvHeads = c.NumKvHeads, hd = c.HeadDim, rows = gpu.Batch;
        var (desc, blocks, tokens) = gpu.LayerTables(layer);
        var kernel = gpu.AttentionKernel;
        plans ??= [gpu.PlanAttention(null!, visible, rows), PagedChecks.FewBlocksPlan(gpu, kernel)];
        // Each pipelined plan of several sequences also with block claims (CudaPagedKernels.BlockClaims), which the cache's
        // own plan takes only for long INT4 heads.
        if (kernel == PagedAttentionKernel.Pipelined && rows > 1)
            plans = [.. plans, .. plans.Where(p => !p.Steal).Select(p => CudaPagedKernels.WithBlockClaims(p, heads / kvHeads))];
        using var dq = Upload(q);
        double worst = 0;
        foreach (var plan in plans)
        {
            string claims = plan.Steal ? " claims" : "";
            using var po = Poisoned((long)rows * heads * plan.Splits * hd * 4);
            using var pml = Poisoned((long)rows * heads * plan.Splits * 8);
            using var counters = Dev.Allocate(rows * kvHeads * 4L);
            counters.Fill32(0);
            for (int launch = 0; launch < 2; launch++)
            {
                using var dout = Poisoned((long)rows * heads * hd * 4);
                gpu.PagedKernels.Attention(dq.Pointer, gpu.PoolPointer, desc, blocks, tokens, dout.Pointer, po.Pointer, pml.Pointer, counters.Pointer,
                    rows, heads, kvHeads, hd, gpu.MaxBlocks, gpu.BlockTokens, gpu.ValueGroup, plan, kernel, batch: true);
                var got = Result(dout, rows * heads * hd);
                Compare.Relative($"{what} splits{plan.Splits}{claims}", got, expected, tolerance);
                worst = Math.Max(worst, Compare.RelativeError(got, expected));
                launches++;
            }
        }
        return worst;
    }

    /// <summary>
    /// Greedy decode of 8 sequences in one captured graph step over the paged cache against each sequence decoded alone
    /// (batch-1 cache, its own graph): the same tokens. Two ways in: prompts of different lengths prefilled into an empty
    /// INT4 cache (appends encoded on the device as each sequence's residual fills, at different steps), and CPU caches
    /// pressed differently per sequence (tokens re-quantized to INT2/INT4 or FP8/INT8, a random share of each head evicted)
    /// uploaded as one batch. Head dimension 64 (CUDA-core kernels) and 128 (tensor cores).
    /// </summary>
    public static string Decode()
    {
        var report = new List<string>();
        const int steps = 40;
        foreach (int hd in new[] { 64, 128 })
        {
            var rnd = new RandomData();
            var (config, prompts, capacity) = BatchDecodeShape(hd, 2, steps, rnd);
            using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
            using var gpu = new CudaTransformer(Dev, weights, DeviceWeightType.F32);
            int batch = prompts.Length;

            var int4 = new PagedKvCacheOptions { KeyFormat = KvFormat.Int4, ValueFormat = KvFormat.Int4, MaxTokens = capacity };
            var alone = prompts.Select(p =>
            {
                using var cache = gpu.CreatePagedCache(int4, capacity);
                return gpu.GenerateGreedy(p, steps, cache).ToArray();
            }).ToArray();
            string kernel = hd == 128 ? "tensor cores" : "wide";
            int ties = 0;
            foreach (var claims in ClaimModes(hd))
            {
                var together = UnderClaims(claims, () =>
                {
                    using var cache = gpu.CreatePagedCache(int4, capacity, batch: batch);
                    if (claims == PipelinedBlockClaims.Always && !cache.PlanAttention(null!, capacity, batch).Steal)
                        throw new CheckFailedException($"hd{hd} INT4 prefilled: the batch plan takes no block claims under {claims}");
                    return gpu.GenerateGreedyBatch(prompts, steps, cache);
                });
                // A sequence may part from its lone run at a near-tie only: the lone run's logits for that step, from a
                // fresh cache over the prompt and its tokens so far.
                ties += SameTokens($"hd{hd} INT4 prefilled ({kernel}{ClaimsLabel(claims)})", alone, together, rnd.Seed, (s, k) =>
                {
                    using var cache = gpu.CreatePagedCache(int4, capacity);
                    return gpu.Forward([.. prompts[s], .. alone[s].Take(k)], cache);
                });
            }

            // Pressed on the CPU, each sequence its own way, then uploaded together.
            var cpu = new Transformer(weights);
            var f16 = new PagedKvCacheOptions { MaxTokens = capacity };
            var cpus = new List<PagedKvCache>();
            try
            {
                for (int s = 0; s < batch; s++)
                {
                    var cache = new PagedKvCache(config, f16);
                    cpus.Add(cache);
                    cpu.Forward(prompts[s], cache);
                    var (kf, vf) = s % 2 == 0 ? (KvFormat.Int2, KvFormat.Int4) : (KvFormat.Fp8E4M3, KvFormat.Int8);
                    for (int l = 0; l < config.NumLayers; l++)
                        for (int g = 0; g < config.NumKvHeads; g++)
                        {
                            int n = cache.Positions(l, g).Count;
                            cache.Requantize(l, g, Enumerable.Range(0, n).Select(_ => rnd.Next(3) == 0).ToArray(), kf, vf);
                            int share = rnd.Next(50);
                            n = cache.Positions(l, g).Count;
                            cache.Evict(l, g, Enumerable.Range(0, n).Select(i => i < n - 1 && rnd.Next(100) < share).ToArray());
                        }
                }
                var next = Enumerable.Range(0, batch).Select(_ => rnd.Next(config.VocabSize)).ToArray();
                var aloneUploaded = Enumerable.Range(0, batch).Select(s =>
                {
                    using var cache = CudaPagedKvCache.Upload(Dev, config, cpus[s], capacity);
                    return DecodeUploaded(gpu, cache, [next[s]], steps)[0];
                }).ToArray();
                foreach (var claims in ClaimModes(hd))
                {
                    var togetherUploaded = UnderClaims(claims, () =>
                    {
                        using var cache = CudaPagedKvCache.Upload(Dev, config, cpus, capacity);
                        return DecodeUploaded(gpu, cache, next, steps);
                    });
                    SameTokens($"hd{hd} pressed per sequence, uploaded ({(hd == 128 ? "tensor cores" : "lane channels")}{ClaimsLabel(claims)})",
                        aloneUploaded, togetherUploaded, rnd.Seed);
                }
            }
            finally
            {
                foreach (var c in cpus) c.Dispose();
            }
            report.Add($"hd{hd}: {batch} sequences x {steps} tokens equal alone and batched{(hd == 128 ? " (fixed runs and block claims)" : "")}, prefilled INT4 ({ties} parted at a near-tie) and pressed mixed uploads (seed {rnd.Seed})");
        }
        return string.Join("; ", report);
    }

    /// <summary>
    /// The batch append folded into the step's products (<see cref="CudaPagedKernels.FuseBatchAppend"/>: RoPE and the append
    /// in the QKV product's epilogue, filled residuals encoded in the attention-output product's launch) against its own
    /// launch (<see cref="CudaPagedKernels.RopeAppend"/>): 8 sequences prefilled to different lengths on bfloat16 weights, one
    /// layer, 39 graph steps each way (every sequence's residual fills at least once), for INT4 and INT2 pairs (encoded by
    /// four blocks a head at head dimension 128, by one at 64, whose quarters hold no whole value group), FP8 and F16 pairs
    /// (four blocks a head, per element), head dimensions 128 and 64; on the device's own grids, and with the products'
    /// grids capped at 8 blocks (<see cref="CudaKernels.TensorCoreGemvWave"/>), so that a block takes several QKV tiles and
    /// one encode block takes every encode task in turn, as the 8B's launches do (its 256 tasks over ~140 encode blocks).
    /// The unfolded run decodes greedily; the folded one is fed the unfolded run's tokens step by step, so both append the
    /// same rows (one layer: a row's key and value depend on its token alone) and every sequence's blocks must be the same
    /// byte for byte (formats, counts, starts, codes, parameters, residual rows). The fold reads a residual its step filled
    /// as float32 rows and encodes it after the attention, where the launch encodes first: a fill step's logits differ by
    /// those rows' rounding, so its greedy tokens are compared for F16 only (at most one of the 312 apart, a near-tie) and
    /// counted for the others. At hd 128 (the pipelined attention) the folded run goes twice, with the attention reading its
    /// split and descriptors after its wait and before it (<see cref="CudaPagedKernels.EarlyBatchTables"/>, which launches
    /// must have taken): the same greedy tokens, every one.
    /// </summary>
    public static string FoldedAppend()
    {
        var report = new List<string>();
        var kernels = Kernels;
        bool saved = kernels.FuseBatchAppend, savedEarly = kernels.EarlyBatchTables;
        const int steps = 40;
        try
        {
            foreach (int hd in new[] { 128, 64 })
            {
                var rnd = new RandomData();
                var (config, prompts, capacity) = BatchDecodeShape(hd, 1, steps, rnd);
                using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
                using var gpu = new CudaTransformer(Dev, weights, DeviceWeightType.BF16);
                int batch = prompts.Length;
                var differed = new List<string>();
                var formats = new[] { (KvFormat.Int4, KvFormat.Int4), (KvFormat.Int2, KvFormat.Int2), (KvFormat.Fp8E4M3, KvFormat.Fp8E4M3), (KvFormat.F16, KvFormat.F16) };
                foreach (var (kf, vf, wave) in formats.SelectMany(f => new[] { (f.Item1, f.Item2, (int?)null), (f.Item1, f.Item2, (int?)8) }))
                {
                    var options = new PagedKvCacheOptions { KeyFormat = kf, ValueFormat = vf, MaxTokens = capacity };
                    string what = $"hd{hd} {kf}/{vf}{(wave != null ? $", grids of {wave} blocks" : "")}";
                    gpu.Kernels.TensorCoreGemvWave = wave;
                    kernels.FuseBatchAppend = false;
                    int[][] greedy;
                    List<IReadOnlyList<CudaPagedKvCache.DeviceBlock>> expected;
                    using (var cache = gpu.CreatePagedCache(options, capacity, batch: batch))
                    {
                        greedy = gpu.GenerateGreedyBatch(prompts, steps, cache);
                        cache.CheckDeviceState();
                        expected = Heads(cache);
                    }
                    kernels.FuseBatchAppend = true;
                    int apart = 0;
                    int[]? lateHistory = null;
                    // The attention reads its tables before its wait only in the pipelined kernel (hd 128; hd 64 takes the wide one).
                    bool pipelined = hd == 128;
                    foreach (bool early in pipelined ? new[] { false, true } : [false])
                    {
                        using (var cache = gpu.CreatePagedCache(options, capacity, batch: batch))
                        {
                            kernels.EarlyBatchTables = early;
                            long before = kernels.FoldedAppendLaunches, earlyBefore = kernels.EarlyTablesLaunches;
                            for (int s = 0; s < batch; s++) gpu.Forward(prompts[s], cache, LogitsMode.Last, s);
                            var starts = Enumerable.Range(0, batch).Select(cache.LengthOf).ToArray();
                            // Where step k's token of sequence s is in History (the steps write nothing else of it).
                            int At(int s, int k) => s * cache.Capacity + starts[s] + k;
                            for (int k = 0; k + 1 < steps; k++)
                            {
                                gpu.BeginDecode(cache, greedy.Select(t => t[k]).ToArray());
                                gpu.EnqueueDecodeSteps(cache, 1);
                            }
                            Dev.Synchronize();
                            cache.CheckDeviceState();
                            if (kernels.FoldedAppendLaunches == before) throw new CheckFailedException($"{what}: the decode graph did not fold the batch append");
                            if (early && kernels.EarlyTablesLaunches == earlyBefore)
                                throw new CheckFailedException($"{what}: no attention of the decode graph read its tables before its wait");
                            var history = new int[batch * cache.Capacity];
                            cache.History.Download<int>(history);
                            // The attention reading the tables before its wait (EarlyBatchTables) reads the same rows: the same tokens,
                            // compared where the steps wrote them (the rest of the buffer is whatever the allocation held).
                            if (lateHistory != null)
                            {
                                int changed = Enumerable.Range(0, batch).Sum(s => Enumerable.Range(0, steps - 1).Count(k => history[At(s, k)] != lateHistory[At(s, k)]));
                                if (changed > 0)
                                    throw new CheckFailedException($"{what}: {changed} greedy tokens differ with the attention's tables read before its wait (seed {rnd.Seed})");
                            }
                            else
                            {
                                lateHistory = history;
                                for (int s = 0; s < batch; s++)
                                    for (int k = 0; k + 1 < steps; k++)
                                        if (history[At(s, k)] != greedy[s][k + 1]) apart++;
                            }
                            var got = Heads(cache);
                            for (int i = 0; i < got.Count; i++)
                                PagedChecks.SameDeviceHead($"{what} sequence {i / config.NumKvHeads} head {i % config.NumKvHeads}", got[i], expected[i], hd, "unfolded");
                        }
                    }
                    gpu.Kernels.TensorCoreGemvWave = null;
                    if (kf == KvFormat.F16 && apart > 1)
                        throw new CheckFailedException($"{what}: {apart} of {batch * (steps - 1)} greedy tokens differ with the append folded (seed {rnd.Seed})");
                    differed.Add($"{kf}{(wave != null ? $" ({wave} blocks)" : "")} {apart}");
                }
                report.Add($"hd{hd}: 8 sequences' caches byte-equal folded and unfolded over {steps - 1} steps in 4 format pairs, on the device's grids and on grids of 8 blocks{(hd == 128 ? ", the folded tokens the same with the attention's tables read before its wait" : "")}; greedy tokens apart at fill steps: {string.Join(", ", differed)} (seed {rnd.Seed})");
            }
        }
        finally
        {
            kernels.FuseBatchAppend = saved;
            kernels.EarlyBatchTables = savedEarly;
        }
        return string.Join("; ", report);

        static List<IReadOnlyList<CudaPagedKvCache.DeviceBlock>> Heads(CudaPagedKvCache cache) =>
            Enumerable.Range(0, cache.Batch).SelectMany(s => Enumerable.Range(0, cache.Config.NumKvHeads).Select(g => cache.ReadHead(0, g, s))).ToList();
    }

    /// <summary>
    /// SnapKV on the device for one sequence of a batch of 3 (prompts of different lengths, float32 and INT4 caches): the
    /// observation window of sequence 1 runs through the GPU model with statistics on, and
    /// <see cref="CudaPagedKvCache.SnapKvEvict(int, int, string, IReadOnlyList{int}, int)"/> keeps of its heads exactly the
    /// tokens the CPU press (SnapKV scorer, uniform budget) keeps, while the other sequences' blocks stay byte for byte;
    /// then 8 greedy graph steps of all 3 sequences give each the tokens it gets alone (sequence 1 pressed the same way in
    /// a batch-1 cache).
    /// </summary>
    public static string SnapKvOneSequence()
    {
        var report = new List<string>();
        var rnd = new RandomData();
        using var llama = new SmallLlama(rnd);
        var (config, gpu, model) = (llama.Config, llama.Gpu, llama.Cpu);
        const int pressed = 1, steps = 8;
        int perSequence = config.NumLayers * config.NumKvHeads, kvHeads = config.NumKvHeads;
        foreach (var (format, window, keepRatio, protect) in new[] { (KvFormat.F32, 8, 0.5, 0), (KvFormat.Int4, 16, 0.3, 4) })
        {
            var lengths = Enumerable.Range(0, 3).Select(_ => 100 + rnd.Next(120)).ToArray();
            int capacity = lengths.Max() + steps + 8, length = lengths[pressed];
            var tokens = lengths.Select(n => Enumerable.Range(0, n).Select(_ => rnd.Next(config.VocabSize)).ToArray()).ToArray();
            var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = capacity };
            var cpus = new List<PagedKvCache>();
            try
            {
                for (int s = 0; s < 3; s++)
                {
                    cpus.Add(new PagedKvCache(config, options));
                    model.Forward(tokens[s], cpus[s]);
                }
                // The pressed sequence starts from its prefilled cache rewound to the window (as the CPU press re-runs it).
                using var rewound = cpus[pressed].Fork();
                rewound.Truncate(length - window);
                var press = new ScoredPress(new SnapKvScorer(window, kernel: 7, pool: "avg"), new UniformBudget(KeepTarget.Ratio(keepRatio)));
                var masks = press.Select(new PressContext(model, cpus[pressed], tokens[pressed]) { ProtectedPrefix = protect });
                var keep = Enumerable.Range(0, perSequence).Select(_ => KeepTarget.Ratio(keepRatio).ForHead(length - protect, perSequence)).ToArray();
                string what = $"snapkv {format} sequence {pressed} of 3 (lengths {string.Join(",", lengths)}, seed {rnd.Seed})";

                using var batch = CudaPagedKvCache.Upload(Dev, config, [cpus[0], rewound, cpus[2]], capacity);
                batch.BeginStatistics(new AttentionStatisticsRequest(length - window, GroupFold.Mean));
                gpu.Forward(tokens[pressed].AsSpan(length - window), batch, sequence: pressed);
                var others = new[] { 0, 2 }.SelectMany(s => Enumerable.Range(0, perSequence).Select(i => (s, i, Blocks: batch.ReadHead(i / kvHeads, i % kvHeads, s)))).ToList();
                var drops = batch.SnapKvEvict(pressed, 7, "avg", keep, protect);
                var stored = batch.HeadLengths();
                for (int i = 0; i < perSequence; i++)
                {
                    var cpuKept = Enumerable.Range(0, length).Where(p => masks[i][p]).ToArray();
                    var gpuKept = Enumerable.Range(0, length).Where(p => !drops[i][p]).ToArray(); // a fresh cache: storage index = position
                    int h = batch.HeadIndex(i / kvHeads, pressed, i % kvHeads);
                    if (!cpuKept.SequenceEqual(gpuKept) || stored[h] != cpuKept.Length)
                        throw new CheckFailedException($"{what}: head {i} keeps {gpuKept.Length} tokens on the device ({stored[h]} stored), {cpuKept.Length} on the CPU");
                }
                foreach (var (s, i, blocks) in others)
                    PagedChecks.SameDeviceHead($"{what}: sequence {s} head {i}", batch.ReadHead(i / kvHeads, i % kvHeads, s), blocks, config.HeadDim, "expected");

                // Decode after the press: all three together against each alone.
                var next = Enumerable.Range(0, 3).Select(_ => rnd.Next(config.VocabSize)).ToArray();
                var alone = Enumerable.Range(0, 3).Select(s =>
                {
                    using var one = CudaPagedKvCache.Upload(Dev, config, s == pressed ? rewound : cpus[s], capacity);
                    if (s == pressed)
                    {
                        one.BeginStatistics(new AttentionStatisticsRequest(length - window, GroupFold.Mean));
                        gpu.Forward(tokens[pressed].AsSpan(length - window), one);
                        one.SnapKvEvict(7, "avg", keep, protect);
                    }
                    return DecodeUploaded(gpu, one, [next[s]], steps)[0];
                }).ToArray();
                SameTokens($"{what}: decode after the press", alone, DecodeUploaded(gpu, batch, next, steps), rnd.Seed);
                report.Add($"{format} window {window} keep {keepRatio}: {masks.Sum(m => m.Count(k => k))} of {perSequence * length} tokens kept as the CPU press, the others untouched, {steps} decode steps as alone");
            }
            finally
            {
                foreach (var c in cpus) c.Dispose();
            }
        }
        return string.Join("; ", report) + $" (seed {rnd.Seed})";
    }

    /// <summary>
    /// The batch decode checks' model shape (8 heads, 2 KV heads of <paramref name="hd"/> channels, <paramref name="layers"/>
    /// layers), 8 random prompts of 3 to 63 tokens, so that the sequences' residuals fill at different steps, and the cache
    /// capacity for <paramref name="steps"/> more tokens.
    /// </summary>
    private static (ModelConfig Config, int[][] Prompts, int Capacity) BatchDecodeShape(int hd, int layers, int steps, RandomData rnd)
    {
        var config = PagedChecks.Shape(8, 2, hd) with { NumLayers = layers, HiddenSize = 8 * hd, IntermediateSize = 768, RopeTheta = 10000, RopeStyle = RopeStyle.HalfSplit };
        var prompts = new[] { 5, 40, 17, 63, 3, 31, 50, 12 }.Select(n => Enumerable.Range(0, n).Select(_ => rnd.Next(config.VocabSize)).ToArray()).ToArray();
        return (config, prompts, prompts.Max(p => p.Length) + steps + 1);
    }

    /// <summary>Graph decode of <paramref name="steps"/> tokens from <paramref name="next"/> (one per sequence); the tokens each produced.</summary>
    private static int[][] DecodeUploaded(CudaTransformer gpu, CudaPagedKvCache cache, int[] next, int steps)
    {
        var starts = Enumerable.Range(0, cache.Batch).Select(cache.LengthOf).ToArray();
        gpu.BeginDecode(cache, next);
        gpu.EnqueueDecodeSteps(cache, steps);
        Dev.Synchronize();
        cache.CheckDeviceState();
        var history = new int[cache.Batch * cache.Capacity];
        cache.History.Download<int>(history);
        return Enumerable.Range(0, cache.Batch).Select(s => history.AsSpan(s * cache.Capacity + starts[s], steps).ToArray()).ToArray();
    }

    /// <summary>
    /// Each sequence's tokens in the batch are its lone run's; with <paramref name="logitsAt"/>, a sequence may part from its
    /// lone run where the two runs' tokens at that step are a near-tie of the lone run's logits (logitsAt(sequence, step)):
    /// within <paramref name="nearTie"/> of the largest |logit|. The batch splits the heads' blocks differently from a lone
    /// run, so its sums round differently; a difference elsewhere fails. Returns how many sequences parted at a near-tie
    /// (their later tokens are not compared).
    /// </summary>
    private static int SameTokens(string what, int[][] alone, int[][] together, int seed, Func<int, int, float[]>? logitsAt = null, double nearTie = 1e-3)
    {
        int ties = 0;
        for (int s = 0; s < alone.Length; s++)
        {
            if (alone[s].SequenceEqual(together[s])) continue;
            int k = 0;
            while (k < alone[s].Length && k < together[s].Length && alone[s][k] == together[s][k]) k++;
            string gap = "";
            if (logitsAt != null && k < alone[s].Length && k < together[s].Length)
            {
                var logits = logitsAt(s, k);
                double scale = logits.Max(x => Math.Abs((double)x)), diff = Math.Abs((double)logits[alone[s][k]] - logits[together[s][k]]);
                if (diff <= nearTie * scale)
                {
                    ties++;
                    continue;
                }
                gap = $"; at step {k} the lone run's logits of tokens {alone[s][k]} and {together[s][k]} differ by {diff:G3} (largest |logit| {scale:G3})";
            }
            throw new CheckFailedException($"{what}: sequence {s} decoded in the batch gave [{string.Join(",", together[s])}], alone [{string.Join(",", alone[s])}]{gap} (seed {seed})");
        }
        return ties;
    }
}
