using System.Diagnostics;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Generation.Sampling;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Bench;

/// <summary>
/// The next-token choice on a Llama-3-sized vocabulary: the device sampler (<see cref="CudaSampler"/>: launch, kernel,
/// 4-byte copy back) against what the CLI did before it, copying the logits row to the host and running the CPU
/// <see cref="Sampler"/>, for greedy, the defaults, top-p over the whole vocabulary and a repetition penalty.
/// Wall-clock microseconds per token, median of the repetitions, both paths on the same row in the same run.
/// </summary>
public static class SamplingBench
{
    public static void Run(int vocab, int repetitions, TextWriter output)
    {
        var dev = CudaDevice.Shared;
        var rnd = new Random(20261126);
        // Logits shaped like a language model's: most of the vocabulary far below a few dozen plausible tokens.
        var row = Enumerable.Range(0, vocab).Select(_ => (float)(rnd.NextDouble() * 8 - 10)).ToArray();
        for (int i = 0; i < 50; i++) row[rnd.Next(vocab)] = (float)(rnd.NextDouble() * 6);
        var history = Enumerable.Range(0, 256).Select(_ => rnd.Next(vocab)).ToArray();
        using var logits = dev.Allocate((long)vocab * sizeof(float));
        var host = new float[vocab];
        output.WriteLine($"Sampling one token from {vocab} logits on {dev} (median of {repetitions}, microseconds per token, wall clock)");
        output.WriteLine("| options | device sampler | copy + CPU sampler | speedup |");
        output.WriteLine("|---|---|---|---|");
        foreach (var (name, options) in new (string, SamplerOptions)[]
        {
            ("greedy", SamplerOptions.Greedy),
            ("defaults (T 0.8, top-k 40, top-p 0.95)", new SamplerOptions()),
            ("top-p 0.9 over the vocabulary (top-k 0)", new SamplerOptions { TopK = 0, TopP = 0.9f }),
            ("defaults + repetition penalty 1.1", new SamplerOptions { RepetitionPenalty = 1.1f }),
        })
        {
            using var device = new CudaSampler(dev, vocab, options);
            var cpu = new Sampler(options);
            double Median(Action step)
            {
                var times = new double[repetitions];
                for (int r = -3; r < repetitions; r++) // 3 warm-up runs (compilation, first allocations)
                {
                    logits.Upload<float>(row);
                    dev.Synchronize();
                    long t0 = Stopwatch.GetTimestamp();
                    step();
                    if (r >= 0) times[r] = Stopwatch.GetElapsedTime(t0).TotalMicroseconds;
                }
                Array.Sort(times);
                return times[repetitions / 2];
            }
            double onDevice = Median(() => device.Sample(logits.Pointer, history));
            double onHost = Median(() => { logits.Download<float>(host); cpu.Sample(host, history); });
            output.WriteLine($"| {name} | {onDevice:F0} | {onHost:F0} | {onHost / onDevice:F1}x |");
        }
    }

    /// <summary>
    /// Sampled generation as the command line runs it (<see cref="CudaTransformer.ForwardSample"/> per token, the token
    /// back on the host each step for stop strings): every kernel launched per token against one replay of the captured
    /// step (<see cref="CudaTransformer.SampleInGraph"/>), over the dense float16 cache and a paged F16 cache, greedy and
    /// the default sampler with a repetition penalty, on dummy BF16 weights of <paramref name="configPath"/>'s shape after a
    /// 64-token prompt. Wall-clock tokens per second over <paramref name="tokens"/> tokens after 8 warm-up tokens.
    /// </summary>
    public static void RunDecode(string configPath, int tokens, TextWriter output)
    {
        var dev = CudaDevice.Shared;
        var config = HfConfigReader.Read(configPath);
        using var weights = DummyWeights.Create(config, GgmlType.BF16, seed: 7);
        using var gpu = new CudaTransformer(dev, weights, DeviceWeightType.BF16);
        var prompt = Enumerable.Range(0, 64).Select(i => i * 7919 % config.VocabSize).ToArray();
        const int warmup = 8;
        int capacity = prompt.Length + warmup + tokens + 8;
        output.WriteLine($"Sampled decode, {Path.GetFileName(configPath)} (dummy BF16 weights) on {dev}: tokens/s, {tokens} tokens after a {prompt.Length}-token prompt");
        output.WriteLine("| cache | sampler | kernels launched per token | one graph replay per token | speedup |");
        output.WriteLine("|---|---|---|---|---|");
        foreach (var paged in new[] { false, true })
            foreach (var (name, options) in new (string, SamplerOptions)[]
            {
                ("greedy", SamplerOptions.Greedy),
                ("defaults + repetition penalty 1.1", new SamplerOptions { RepetitionPenalty = 1.1f }),
            })
            {
                var rates = new double[2];
                foreach (var graph in new[] { false, true })
                {
                    gpu.SampleInGraph = graph;
                    using DeviceKvCache cache = paged
                        ? gpu.CreatePagedCache(new PagedKvCacheOptions { KeyFormat = KvFormat.F16, ValueFormat = KvFormat.F16, MaxTokens = capacity }, capacity)
                        : gpu.CreateCache(capacity);
                    using var sampler = new CudaSampler(dev, config.VocabSize, options);
                    var history = new List<int>(prompt);
                    int next = gpu.ForwardSample(prompt, cache, sampler, history.ToArray());
                    long t0 = 0;
                    for (int i = 0; i < warmup + tokens; i++)
                    {
                        if (i == warmup) t0 = Stopwatch.GetTimestamp();
                        history.Add(next);
                        next = gpu.ForwardSample([next], cache, sampler, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(history));
                    }
                    rates[graph ? 1 : 0] = tokens / Stopwatch.GetElapsedTime(t0).TotalSeconds;
                }
                gpu.SampleInGraph = true;
                output.WriteLine($"| {(paged ? "paged F16" : "dense F16")} | {name} | {rates[0]:F0} | {rates[1]:F0} | {rates[1] / rates[0]:F2}x |");
            }
    }
}
