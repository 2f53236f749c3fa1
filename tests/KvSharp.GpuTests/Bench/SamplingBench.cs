using System.Diagnostics;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation.Sampling;

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
}
