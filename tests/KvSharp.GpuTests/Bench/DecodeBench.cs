using System.Diagnostics;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Bench;

/// <summary>
/// Batch-1 greedy decode speed of a dummy-weight model (bfloat16 matrices, float16 KV cache) at given
/// context lengths, against the roofline: (weight bytes + KV bytes read per token) / the measured
/// device-to-device copy bandwidth. The cache is filled with random K/V up to the context length instead
/// of prefilling it (decode cost depends on the length, not on the values). Also times a 4K prefill.
/// </summary>
public static class DecodeBench
{
    public static void Run(string configPath, IReadOnlyList<int> contexts, int steps, int prefillTokens, TextWriter log)
    {
        var device = CudaDevice.Shared;
        device.MakeCurrent();
        log.WriteLine($"device: {device}");
        double bandwidth = CopyBandwidth(device);
        log.WriteLine($"device-to-device copy: {bandwidth / 1e9:F0} GB/s (bytes read + written)");

        var config = HfConfigReader.Read(configPath);
        var sw = Stopwatch.StartNew();
        CudaTransformer gpu;
        using (var weights = DummyWeights.Create(config, GgmlType.BF16, seed: 7))
        {
            log.WriteLine($"dummy weights {Path.GetFileName(configPath)}: {weights.ByteCount / 1e9:F2} GB BF16, generated in {sw.Elapsed.TotalSeconds:F1} s");
            sw.Restart();
            gpu = new CudaTransformer(device, weights, DeviceWeightType.BF16);
            log.WriteLine($"uploaded in {sw.Elapsed.TotalSeconds:F1} s");
        }
        using var _ = gpu;
        long weightBytes = gpu.WeightBytesReadPerToken;
        using var timer = new CudaTimer(device);
        KernelTimes(gpu, timer, bandwidth, log);
        var rows = new List<string>();
        foreach (int context in contexts)
        {
            const int repeats = 3;
            using var cache = gpu.CreateCache(context + (repeats + 1) * steps + 8);
            cache.FillRandom(gpu.Kernels, context, seed: (uint)context);
            gpu.BeginDecode(cache, token: 1000);
            gpu.EnqueueDecodeSteps(cache, steps); // warm-up
            device.Synchronize();
            var times = new List<double>();
            for (int r = 0; r < repeats; r++)
            {
                timer.Start();
                gpu.EnqueueDecodeSteps(cache, steps);
                times.Add(timer.StopMilliseconds() / steps);
            }
            times.Sort();
            double ms = times[repeats / 2];
            // KV read per token at the middle of the timed steps.
            long kvBytes = (long)(context + 2.5 * steps) * config.KvBytesPerToken(2);
            double rooflineMs = (weightBytes + kvBytes) / bandwidth * 1e3;
            rows.Add($"| {context} | {ms:F3} | {1000 / ms:F1} | {(weightBytes + kvBytes) / 1e9:F2} | {1000 / rooflineMs:F1} | {rooflineMs / ms * 100:F0}% | {(weightBytes + kvBytes) / (ms / 1e3) / 1e9:F0} |");
            log.WriteLine($"context {context}: {ms:F3} ms/token (min {times[0]:F3}, max {times[^1]:F3})");
        }

        if (prefillTokens > 0)
        {
            using var cache = gpu.CreateCache(prefillTokens + 1);
            var prompt = Enumerable.Range(0, prefillTokens).Select(i => (i * 7919) % config.VocabSize).ToArray();
            using (var warm = gpu.CreateCache(600)) gpu.Forward(prompt.AsSpan(0, 520), warm); // cuBLAS heuristics, scratch
            sw.Restart();
            gpu.Forward(prompt, cache);
            double s = sw.Elapsed.TotalSeconds;
            log.WriteLine($"prefill {prefillTokens} tokens: {s * 1e3:F0} ms, {prefillTokens / s:F0} tokens/s (chunks of {gpu.PrefillChunk})");
        }

        log.WriteLine();
        log.WriteLine($"weights read per token: {weightBytes / 1e9:F3} GB; KV per token of context: {config.KvBytesPerToken(2) / 1024.0:F0} KiB");
        log.WriteLine("| context | ms/token | tokens/s | GB read/token | roofline tokens/s | % of roofline | achieved GB/s |");
        log.WriteLine("|---|---|---|---|---|---|---|");
        foreach (var r in rows) log.WriteLine(r);
    }

    /// <summary>
    /// Each decode matrix-vector product alone (20 back-to-back launches, event-timed) and one layer's attention
    /// at 32K: achieved bandwidth per kernel, to see which part of a token's time is off the roofline.
    /// </summary>
    private static void KernelTimes(CudaTransformer gpu, CudaTimer timer, double bandwidth, TextWriter log)
    {
        var device = gpu.Device;
        var c = gpu.Config;
        const int launches = 20;
        using var x = device.Allocate(4L * Math.Max(c.HiddenSize, c.IntermediateSize));
        using var y = device.Allocate(4L * Math.Max(c.VocabSize, 2 * c.IntermediateSize));
        x.Fill32(0x3C000000u); // 2^-7: finite, non-zero activations
        y.Fill32(0);
        foreach (var (name, m, mode) in gpu.DecodeMatrices())
        {
            int rows = mode == CudaKernels.GemvMode.SwiGlu ? m.Rows / 2 : m.Rows;
            gpu.Kernels.Gemv(m.Type, m.Pointer, x.Pointer, y.Pointer, rows, m.Cols, 1, mode);
            timer.Start();
            for (int i = 0; i < launches; i++) gpu.Kernels.Gemv(m.Type, m.Pointer, x.Pointer, y.Pointer, rows, m.Cols, 1, mode);
            double us = timer.StopMilliseconds() * 1e3 / launches;
            double gbps = m.Buffer.ByteLength / (us * 1e-6) / 1e9;
            log.WriteLine($"kernel gemv {name} [{m.Rows}x{m.Cols}] {m.Buffer.ByteLength / 1e6:F0} MB: {us:F1} us, {gbps:F0} GB/s ({gbps * 1e9 / bandwidth * 100:F0}% of copy)");
        }
        double Time(Action launch)
        {
            launch();
            timer.Start();
            for (int i = 0; i < launches; i++) launch();
            return timer.StopMilliseconds() * 1e3 / launches;
        }
        using var norm = device.Allocate(4L * c.HiddenSize);
        norm.Fill32(0x3F800000u);
        log.WriteLine($"kernel rmsnorm 1x{c.HiddenSize}: {Time(() => gpu.Kernels.RmsNorm(x.Pointer, norm.Pointer, y.Pointer, 1, c.HiddenSize, 1e-5f)):F1} us");
        log.WriteLine($"kernel argmax over {c.VocabSize}: {Time(() => gpu.Kernels.ArgMax(y.Pointer, c.VocabSize, x.Pointer + 4UL, 0, x.Pointer, 0)):F1} us");

        foreach (int context in new[] { 512, 4096, 32768 })
        {
            using var cache = gpu.CreateCache(context + 1);
            cache.FillRandom(gpu.Kernels, context, seed: 3);
            using var q = device.Allocate(4L * (c.NumHeads + 2 * c.NumKvHeads) * c.HeadDim);
            using var att = device.Allocate(4L * c.NumHeads * c.HeadDim);
            q.Fill32(0x3C000000u);
            using var pos = device.Allocate(4);
            pos.Upload<int>([context - 1]);
            if (context == 512)
            {
                using var freq = device.Allocate(4L * c.HeadDim / 2);
                freq.Fill32(0x3A800000u);
                log.WriteLine($"kernel qkv_rope_append 1 row: {Time(() => gpu.Kernels.QkvRopeAppend(q.Pointer, att.Pointer, 0, 0, freq.Pointer, cache.Keys(0), cache.Values(0), 1, c.NumHeads, c.NumKvHeads, c.HeadDim, cache.Capacity, pos.Pointer, false, 1e-5f)):F1} us");
            }
            var plan = gpu.Kernels.PlanAttention(context, 1, c.NumHeads, c.NumKvHeads, c.HeadDim);
            using var po = device.Allocate(4L * c.NumHeads * plan.Splits * c.HeadDim);
            using var pml = device.Allocate(8L * c.NumHeads * plan.Splits);
            using var counters = device.Allocate(4L * c.NumKvHeads);
            counters.Fill32(0);
            double aus = Time(() => gpu.Kernels.Attention(q.Pointer, cache.Keys(0), cache.Values(0), att.Pointer, po.Pointer, pml.Pointer, counters.Pointer,
                1, c.NumHeads, c.NumKvHeads, c.HeadDim, cache.Capacity, pos.Pointer, plan));
            long kvBytes = 2L * context * c.NumKvHeads * c.HeadDim * 2;
            log.WriteLine($"kernel attention 1 layer at {context} ({plan.Splits} chunks of {plan.Chunk}) {kvBytes / 1e6:F0} MB: {aus:F1} us, {kvBytes / (aus * 1e-6) / 1e9:F0} GB/s");
        }
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
