using System.Diagnostics;
using KvSharp.Compute.Cuda;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Bench;

/// <summary>
/// Greedy decode speed of a dummy-weight model (bfloat16 matrices, float16 KV cache) at given context lengths and
/// batch sizes, against the roofline: (weight bytes + KV bytes read per step) / the measured device-to-device copy
/// bandwidth. The caches are filled with random K/V up to the context length instead of prefilling them (decode cost
/// depends on the length, not on the values). Batch 1 is measured with and without programmatic dependent launch
/// ($KVSHARP_CUDA_PDL picks the mode the table reports).
/// Also times prefills (the tensor-core attention) and each decode kernel alone.
/// </summary>
public static class DecodeBench
{
    /// <summary>Seconds of <see cref="HeatUp"/> before a process's first timed row (past the power cap's transient after idle).</summary>
    private const double FirstHeatSeconds = 3.0;

    /// <summary>Seconds of <see cref="HeatUp"/> before each later row (a cache's synthesis idles the device in between).</summary>
    private const double RowHeatSeconds = 0.5;

    private static bool _heated;

    /// <summary>
    /// The shared device (its name and measured copy bandwidth logged) and a model of random BF16 weights of
    /// <paramref name="configPath"/>'s shape uploaded to it, as every decode benchmark starts. The caller owns the model.
    /// </summary>
    internal static (CudaDevice Device, double Bandwidth, ModelConfig Config, CudaTransformer Model) OpenDummyModel(string configPath, TextWriter log)
    {
        var device = CudaDevice.Shared;
        device.MakeCurrent();
        log.WriteLine($"device: {device}");
        double bandwidth = CopyBandwidth(device);
        log.WriteLine($"device-to-device copy: {bandwidth / 1e9:F0} GB/s (bytes read + written)");
        var config = HfConfigReader.Read(configPath);
        var sw = Stopwatch.StartNew();
        using var weights = DummyWeights.Create(config, GgmlType.BF16, seed: 7);
        log.WriteLine($"dummy weights {Path.GetFileName(configPath)}: {weights.ByteCount / 1e9:F2} GB BF16, generated in {sw.Elapsed.TotalSeconds:F1} s");
        sw.Restart();
        var gpu = new CudaTransformer(device, weights, DeviceWeightType.BF16);
        log.WriteLine($"uploaded in {sw.Elapsed.TotalSeconds:F1} s");
        return (device, bandwidth, config, gpu);
    }

    /// <summary>Runs the benchmark and writes its log and result tables to <paramref name="log"/>.</summary>
    public static void Run(string configPath, IReadOnlyList<int> contexts, IReadOnlyList<int> batchContexts, int batch, int steps,
        IReadOnlyList<int> prefills, TextWriter log)
    {
        var (device, bandwidth, config, gpu) = OpenDummyModel(configPath, log);
        using var _ = gpu;
        long weightBytes = gpu.WeightBytesReadPerToken;
        using var timer = new CudaTimer(device);
        KernelTimes(gpu, timer, bandwidth, batch, log);

        var rows = new List<string>();
        var variantRows = new List<string>();
        string mode = device.ProgrammaticLaunch ? "PDL" : device.ProgrammaticMatrixVector ? "PDL for the products" : "no PDL";
        foreach (int context in contexts)
        {
            // Each decode-step change alone against the earlier configuration, and all of them (the default) with
            // every kernel launched programmatically; the result table keeps the configured mode.
            var defaults = Variant.Capture(gpu);
            var before = defaults with
            {
                PdlAll = false,
                PdlMatrixVector = false,
                FuseRope = false,
                Pipelined = false,
                MinChunk = 128,
                FuseArgMax = false,
                WaveSplit = false,
                Prefetch = false,
            };
            var all = defaults with { PdlAll = false, PdlMatrixVector = true, FuseRope = true, Pipelined = true, MinChunk = 32, FuseArgMax = true, WaveSplit = true, Prefetch = false };
            var variants = new List<(string Name, Variant V)>
            {
                ("before (no PDL, separate RoPE and argmax, serial attention, chunks >= 128, split for 32 warps/SM)", before),
                ("all but the wave split", all with { WaveSplit = false }),
                ("all but the fused argmax", all with { FuseArgMax = false }),
                ("all", all),
                ("all + PDL for every kernel", all with { PdlAll = true }),
                ("all + L2 prefetch of the output projection during attention", all with { Prefetch = true }),
            };
            // At short contexts the streaming attention's chunks are ~32 keys (21 splits at 512 tokens and 32 steps):
            // fewer, longer chunks give each grid block more work and the merge fewer partial outputs, where that changes
            // the split (the attention's ~6 µs at 512 tokens is latency, not bytes).
            int visible = DecodeCapacity(context, steps); // the captured graph's plan covers the cache's capacity
            int allSplits = StreamingSplits(gpu, visible, all.MinChunk);
            foreach (int minChunk in new[] { 64, 128 })
            {
                int splits = StreamingSplits(gpu, visible, minChunk);
                if (splits != allSplits) variants.Add(($"all, chunks of at least {minChunk} keys ({splits} splits)", all with { MinChunk = minChunk }));
            }
            foreach (var (name, v) in variants)
            {
                v.Apply(gpu);
                variantRows.Add(Decode(gpu, timer, context, 1, steps, bandwidth, weightBytes, name, log).Replace("| 1 | ", $"| {name} | "));
            }
            defaults.Apply(gpu);
            rows.Add(Decode(gpu, timer, context, 1, steps, bandwidth, weightBytes, mode, log));
        }
        foreach (int context in batchContexts)
        {
            if (context == batchContexts[0])
            {
                gpu.Kernels.UseTensorCoreGemv = false;
                Decode(gpu, timer, context, batch, steps, bandwidth, weightBytes, "CUDA-core matrix-vector kernels", log);
                gpu.Kernels.UseTensorCoreGemv = true;
            }
            long need = (long)batch * DecodeCapacity(context, steps) * config.KvBytesPerToken(2);
            if (need > device.FreeMemory - (2L << 30))
            {
                log.WriteLine($"batch {batch} at {context}: {need / 1e9:F1} GB of KV cache do not fit ({device.FreeMemory / 1e9:F1} GB free)");
                continue;
            }
            rows.Add(Decode(gpu, timer, context, batch, steps, bandwidth, weightBytes, mode, log));
        }

        var prefillRows = new List<string>();
        if (prefills.Count > 0)
        {
            using (var warm = gpu.CreateCache(2100)) gpu.Forward(Prompt(2050, config), warm); // cuBLAS heuristics, scratch, kernels
            foreach (int tokens in prefills)
            {
                using var cache = gpu.CreateCache(tokens + 1);
                var prompt = Prompt(tokens, config);
                var seconds = new List<double>();
                var sw = new Stopwatch();
                for (int r = 0; r < 3; r++)
                {
                    cache.Length = 0;
                    sw.Restart();
                    gpu.Forward(prompt, cache);
                    seconds.Add(sw.Elapsed.TotalSeconds);
                }
                seconds.Sort();
                double s = seconds[1];
                log.WriteLine($"prefill {tokens} tokens: {s * 1e3:F0} ms, {tokens / s:F0} tokens/s (median of 3: {string.Join(", ", seconds.Select(x => $"{x * 1e3:F0}"))} ms; chunks of {gpu.PrefillChunk})");
                prefillRows.Add($"| {tokens} | {s * 1e3:F0} | {tokens / s:F0} |");
            }
        }

        log.WriteLine();
        log.WriteLine($"weights read per step: {weightBytes / 1e9:F3} GB; KV per token of context: {config.KvBytesPerToken(2) / 1024.0:F0} KiB");
        log.WriteLine("| batch | context | ms/step | tokens/s | GB read/step | roofline steps/s | % of roofline | achieved GB/s |");
        log.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (var r in rows) log.WriteLine(r);
        log.WriteLine();
        log.WriteLine("| batch 1 variant | context | ms/step | tokens/s | GB read/step | roofline steps/s | % of roofline | achieved GB/s |");
        log.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (var r in variantRows) log.WriteLine(r);
        if (prefillRows.Count > 0)
        {
            log.WriteLine();
            log.WriteLine("| prefill tokens | ms | tokens/s |");
            log.WriteLine("|---|---|---|");
            foreach (var r in prefillRows) log.WriteLine(r);
        }
    }

    /// <summary>The decode-step switches the benchmark compares (launch mode, fused RoPE, attention kernel and split, L2 prefetch).</summary>
    private sealed record Variant(bool PdlAll, bool PdlMatrixVector, bool FuseRope, bool Pipelined, int MinChunk, bool FuseArgMax, bool WaveSplit, bool Prefetch)
    {
        public static Variant Capture(CudaTransformer gpu) => new(gpu.Device.ProgrammaticLaunch, gpu.Device.ProgrammaticMatrixVector,
            gpu.FuseRopeIntoQkv, gpu.Kernels.PipelinedAttention, gpu.Kernels.MinStreamingChunk, gpu.FuseArgMaxIntoHead, gpu.Kernels.WaveSplit,
            gpu.PrefetchNextWeights);

        public void Apply(CudaTransformer gpu)
        {
            gpu.Device.ProgrammaticLaunch = PdlAll && gpu.Device.ComputeMajor >= 9;
            gpu.Device.ProgrammaticMatrixVector = PdlMatrixVector && gpu.Device.ComputeMajor >= 9;
            gpu.FuseRopeIntoQkv = FuseRope;
            gpu.Kernels.PipelinedAttention = Pipelined;
            gpu.Kernels.MinStreamingChunk = MinChunk;
            gpu.FuseArgMaxIntoHead = FuseArgMax;
            gpu.Kernels.WaveSplit = WaveSplit;
            gpu.PrefetchNextWeights = Prefetch;
        }
    }

    /// <summary>The streaming attention's splits for <paramref name="visible"/> keys with chunks of at least <paramref name="minChunk"/>.</summary>
    private static int StreamingSplits(CudaTransformer gpu, int visible, int minChunk)
    {
        var c = gpu.Config;
        int saved = gpu.Kernels.MinStreamingChunk;
        gpu.Kernels.MinStreamingChunk = minChunk;
        int splits = gpu.Kernels.PlanAttention(visible, 1, c.NumHeads, c.NumKvHeads, c.HeadDim).Splits;
        gpu.Kernels.MinStreamingChunk = saved;
        return splits;
    }

    private static int[] Prompt(int tokens, ModelConfig config) => Enumerable.Range(0, tokens).Select(i => (i * 7919) % config.VocabSize).ToArray();

    /// <summary>Timed runs of a <see cref="Decode"/> row.</summary>
    private const int DecodeRepeats = 3;

    /// <summary>The cache <see cref="Decode"/> creates: the context, the warm-up and the timed steps, and a margin.</summary>
    private static int DecodeCapacity(int context, int steps) => context + (DecodeRepeats + 1) * steps + 8;

    /// <summary>Median of 3 event-timed runs of <paramref name="steps"/> graph decode steps; one result-table row.</summary>
    internal static string Decode(CudaTransformer gpu, CudaTimer timer, int context, int batch, int steps, double bandwidth, long weightBytes,
        string note, TextWriter log)
    {
        var config = gpu.Config;
        using var cache = gpu.CreateCache(DecodeCapacity(context, steps), batch);
        cache.FillRandom(gpu.Kernels, context, seed: (uint)context);
        gpu.BeginDecode(cache, Enumerable.Range(0, batch).Select(i => 1000 + i).ToArray());
        gpu.EnqueueDecodeSteps(cache, steps); // warm-up
        gpu.Device.Synchronize();
        var (ms, runs) = TimeSteps(gpu, cache, timer, steps, DecodeRepeats, log);
        // KV read per step at the middle of the timed steps, every sequence.
        long kvBytes = (long)(batch * (context + 2.5 * steps)) * config.KvBytesPerToken(2);
        double rooflineMs = (weightBytes + kvBytes) / bandwidth * 1e3;
        log.WriteLine($"batch {batch} context {context} {note}: {ms:F3} ms/step, {batch * 1000 / ms:F1} tokens/s, {rooflineMs / ms * 100:F1}% of roofline (runs {runs})");
        return $"| {batch} | {context} | {ms:F3} | {batch * 1000 / ms:F1} | {(weightBytes + kvBytes) / 1e9:F2} | {1000 / rooflineMs:F1} | {rooflineMs / ms * 100:F0}% | {(weightBytes + kvBytes) / (ms / 1e3) / 1e9:F0} |";
    }

    /// <summary>
    /// Each decode matrix-vector product alone (20 back-to-back launches, event-timed) for 1 and
    /// <paramref name="batch"/> rows, one layer's attention at several contexts, and the prefill attention: achieved
    /// bandwidth (or rate) per kernel, to see which part of a step's time is off the roofline.
    /// </summary>
    private static void KernelTimes(CudaTransformer gpu, CudaTimer timer, double bandwidth, int batch, TextWriter log)
    {
        var device = gpu.Device;
        var c = gpu.Config;
        const int launches = 20;
        double Time(Action launch)
        {
            launch();
            timer.Start();
            for (int i = 0; i < launches; i++) launch();
            return timer.StopMilliseconds() * 1e3 / launches;
        }
        using var x = device.Allocate(4L * batch * Math.Max(c.HiddenSize, c.IntermediateSize));
        using var y = device.Allocate(4L * batch * Math.Max(c.VocabSize, 2 * c.IntermediateSize));
        x.Fill32(0x3C000000u); // 2^-7: finite, non-zero activations
        y.Fill32(0);
        // Batch 1: with the fused norm and without (its cost); batch rows: tensor cores and CUDA cores.
        foreach (var (n, tensorCores, withNorm) in new[] { (1, false, true), (1, false, false), (batch, true, true), (batch, false, true) })
        {
            gpu.Kernels.UseTensorCoreGemv = tensorCores; // before DecodeMatrices, which asks whether the products take tensor cores
            foreach (var (name, m, mode, norm, narrow) in gpu.DecodeMatrices(0, n))
            {
                if (!withNorm && norm == 0) continue;
                int rows = mode == CudaKernels.GemvMode.SwiGlu ? m.Rows / 2 : m.Rows;
                ulong useNorm = withNorm ? norm : 0;
                foreach (bool wave in mode == CudaKernels.GemvMode.Accumulate && n == 1 ? new[] { false, true } : [true])
                {
                    gpu.Kernels.WaveSplit = wave;
                    double us = Time(() => gpu.Kernels.Gemv(m.Type, m.Pointer, x.Pointer, y.Pointer, rows, m.Cols, n, mode, useNorm, 1e-5f, narrow && withNorm));
                    double gbps = m.Buffer.ByteLength / (us * 1e-6) / 1e9;
                    string label = (withNorm ? name : name.Replace("+norm", "") + " (no norm)") + (n > 1 ? (tensorCores ? ", tensor cores" : ", CUDA cores") : "")
                        + (mode == CudaKernels.GemvMode.Accumulate && n == 1 ? (wave ? ", wave split" : ", 32-warp split") : "")
                        + (narrow && withNorm ? ", 16-bit activations" : "");
                    log.WriteLine($"kernel gemv x{n} {label} [{m.Rows}x{m.Cols}] {m.Buffer.ByteLength / 1e6:F0} MB: {us:F1} us, {gbps:F0} GB/s ({gbps * 1e9 / bandwidth * 100:F0}% of copy)");
                }
                gpu.Kernels.WaveSplit = true;
            }
        }
        gpu.Kernels.UseTensorCoreGemv = true;
        log.WriteLine($"kernel argmax over {c.VocabSize}: {Time(() => gpu.Kernels.ArgMax(y.Pointer, c.VocabSize, x.Pointer + 4UL, 0, x.Pointer, 0)):F1} us");

        foreach (var (context, rowsAtOnce) in new[] { (512, 1), (4096, 1), (32768, 1), (131072, 1), (4096, batch), (32768, batch) })
        {
            long kvBytes = (long)rowsAtOnce * 2L * context * c.NumKvHeads * c.HeadDim * 2;
            if (kvBytes * c.NumLayers > device.FreeMemory - (4L << 30)) continue;
            using var cache = gpu.CreateCache(context + 1, rowsAtOnce);
            cache.FillRandom(gpu.Kernels, context, seed: 3);
            using var q = device.Allocate(4L * rowsAtOnce * (c.NumHeads + 2 * c.NumKvHeads) * c.HeadDim);
            using var att = device.Allocate(4L * rowsAtOnce * c.NumHeads * c.HeadDim);
            q.Fill32(0x3C000000u);
            using var pos = device.Allocate(4L * rowsAtOnce);
            pos.Upload<int>(Enumerable.Repeat(context - 1, rowsAtOnce).ToArray());
            if (context == 512)
            {
                using var freq = device.Allocate(4L * c.HeadDim / 2);
                freq.Fill32(0x3A800000u);
                log.WriteLine($"kernel qkv_rope_append 1 row: {Time(() => gpu.Kernels.QkvRopeAppend(q.Pointer, att.Pointer, 0, 0, freq.Pointer, cache.Keys(0), cache.Values(0), 1, c.NumHeads, c.NumKvHeads, c.HeadDim, cache.Capacity, pos.Pointer, false, 1e-5f, cache.SequenceStride)):F1} us");
            }
            var plan = gpu.Kernels.PlanAttention(context, rowsAtOnce, c.NumHeads, c.NumKvHeads, c.HeadDim);
            using var po = device.Allocate(4L * rowsAtOnce * c.NumHeads * plan.Splits * c.HeadDim);
            using var pml = device.Allocate(8L * rowsAtOnce * c.NumHeads * plan.Splits);
            using var counters = device.Allocate(4L * rowsAtOnce * c.NumKvHeads);
            counters.Fill32(0);
            foreach (bool pipelined in new[] { false, true })
            {
                gpu.Kernels.PipelinedAttention = pipelined;
                double aus = Time(() => gpu.Kernels.Attention(q.Pointer, cache.Keys(0), cache.Values(0), att.Pointer, po.Pointer, pml.Pointer, counters.Pointer,
                    rowsAtOnce, c.NumHeads, c.NumKvHeads, c.HeadDim, cache.Capacity, pos.Pointer, plan, cache.SequenceStride));
                log.WriteLine($"kernel attention{(pipelined ? " pipelined" : " serial")} x{rowsAtOnce} 1 layer at {context} ({plan.Splits} splits{(plan.Streaming ? ", streaming" : $" of {plan.Chunk}")}) {kvBytes / 1e6:F0} MB: {aus:F1} us, {kvBytes / (aus * 1e-6) / 1e9:F0} GB/s");
            }
            gpu.Kernels.PipelinedAttention = true;
        }

        if (CudaKernels.FlashAttention(c.HeadDim))
            foreach (var (past, n) in new[] { (0, 2048), (30720, 2048) })
            {
                using var cache = gpu.CreateCache(past + n);
                cache.FillRandom(gpu.Kernels, past + n, seed: 5);
                using var q = device.Allocate(4L * n * c.NumHeads * c.HeadDim);
                using var att = device.Allocate(4L * n * c.NumHeads * c.HeadDim);
                q.Fill32(0x3C000000u);
                using var pos = device.Allocate(4);
                pos.Upload<int>([past]);
                double us = Time(() => gpu.Kernels.FlashPrefill(q.Pointer, cache.Keys(0), cache.Values(0), att.Pointer, n, c.NumHeads, c.NumKvHeads, c.HeadDim, cache.Capacity, pos.Pointer));
                // Causal: n rows see past + 1 .. past + n keys; 4 flops per (query, key, dim) for Q·Kᵀ and P·V.
                double flops = 4.0 * c.NumHeads * c.HeadDim * ((double)n * past + (double)n * (n + 1) / 2);
                log.WriteLine($"kernel flash prefill 1 layer, {n} rows after {past}: {us:F1} us, {flops / (us * 1e-6) / 1e12:F0} TFLOP/s");
            }
    }

    /// <summary>
    /// Keeps the device busy with device-to-device copies (256 MiB each way) for at least <paramref name="seconds"/>, right
    /// before a timed run. On an H200 a decode load after a few seconds of idle (the dummy weights' generation, a cache's
    /// synthesis) drives the board into its software power cap for ~1-2 s (nvidia-smi: 700 W, clock event reason 0x4, the
    /// SM clock down to 1410-1845 MHz from 1980; stop 36): the first row of a process, always the dense float16 cache, then
    /// ran up to 19% slow in some of its timed runs, and every compressed row divided by it looked faster. After the
    /// transient the same loads run at 1980 MHz under the cap.
    /// </summary>
    private static bool HeatUp(CudaDevice device, double seconds)
    {
        const long bytes = 256L << 20;
        DeviceBuffer? a = null, b = null;
        try
        {
            a = device.Allocate(bytes);
            b = device.Allocate(bytes);
        }
        catch (CudaException)
        {
            // No room beside the cache just created (the row itself may still fit): time it without the heat-up.
            a?.Dispose();
            return false;
        }
        using (a)
        using (b)
        {
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed.TotalSeconds < seconds)
            {
                for (int i = 0; i < 64; i++) b.CopyFromAsync(a, bytes);
                device.Synchronize();
            }
        }
        return true;
    }

    /// <summary>
    /// A timed row of a decode benchmark: <paramref name="repeats"/> event-timed runs of <paramref name="steps"/> graph decode
    /// steps over <paramref name="cache"/> (after <see cref="CudaTransformer.BeginDecode"/> and a warm-up), after
    /// <see cref="HeatUpBeforeRow"/>. The median ms a step (the upper one of an even count) and the runs' times in run order
    /// (drift or two modes show there).
    /// </summary>
    internal static (double Ms, string Runs) TimeSteps(CudaTransformer gpu, DeviceKvCache cache, CudaTimer timer, int steps, int repeats, TextWriter log)
    {
        HeatUpBeforeRow(gpu.Device, log);
        var times = new List<double>();
        for (int r = 0; r < repeats; r++)
        {
            timer.Start();
            gpu.EnqueueDecodeSteps(cache, steps);
            times.Add(timer.StopMilliseconds() / steps);
        }
        string runs = string.Join(" ", times.Select(t => t.ToString("F3")));
        times.Sort();
        return (times[repeats / 2], runs);
    }

    /// <summary>
    /// <see cref="HeatUp"/> before a timed row: <see cref="FirstHeatSeconds"/> before the process's first,
    /// <see cref="RowHeatSeconds"/> before later ones; a row the device has no room to heat for is logged as such.
    /// </summary>
    private static void HeatUpBeforeRow(CudaDevice device, TextWriter log)
    {
        if (!HeatUp(device, _heated ? RowHeatSeconds : FirstHeatSeconds))
        {
            log.WriteLine("(no heat-up before the next row: no room for its 512 MiB of copies)");
            return;
        }
        _heated = true;
    }

    /// <summary>Bytes read plus bytes written per second by a 1 GiB device-to-device copy (median of 10).</summary>
    internal static double CopyBandwidth(CudaDevice device)
    {
        const long bytes = 1L << 30;
        using var a = device.Allocate(bytes);
        using var b = device.Allocate(bytes);
        a.Fill32(0x3F800000u);
        using var timer = new CudaTimer(device);
        b.CopyFromAsync(a, bytes);
        var times = new List<double>();
        for (int i = 0; i < 10; i++)
        {
            timer.Start();
            b.CopyFromAsync(a, bytes);
            times.Add(timer.StopMilliseconds());
        }
        times.Sort();
        return 2.0 * bytes / (times[5] / 1e3);
    }
}
