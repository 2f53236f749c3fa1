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

    /// <summary>Bytes read plus bytes written per second by a 1 GiB device-to-device copy (median of 10).</summary>
    private static double CopyBandwidth(CudaDevice device)
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
