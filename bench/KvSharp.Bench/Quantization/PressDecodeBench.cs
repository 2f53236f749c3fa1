using KvSharp.Bench.EndToEnd;
using System.Diagnostics;
using System.Globalization;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Registry;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Bench.Quantization;

/// <summary>
/// Decode speed per compression method (issue 4 point 4, issue 5 point 6): the SmolLM2-135M shape with Q8_0 random
/// weights, an F16 cache filled with N random tokens per layer (as kv-e2e: a 32K prefill reads the cache no
/// differently), then per method a copy-on-write fork compressed by the press (scores from the random scorer: any cheap
/// scorer gives the same cache shape) or a cache in the method's own format (fp8, int4), against the full F16 cache.
/// Reports KV bytes, decode tokens/s through the whole model, decode attention time alone (every layer's Attend of one
/// query at the last position; wall clock and the process's CPU time, the latter less sensitive to a shared machine)
/// and the attention speedup the bytes predict (F16 bytes / bytes). Run with:
/// dotnet run -c Release --project bench/KvSharp.Bench -- press-decode [contexts] [rounds] [steps] [threads] ["press;press;…"]
/// e.g. press-decode 8192,32768 3 8; rounds 0 measures the attention alone (no decode steps through the model).
/// </summary>
/// <remarks>
/// Methods run one after the other (rounds of decode steps, best and median), the F16 baseline first and last, so
/// drift of a shared machine shows as a difference between the two baseline rows.
/// </remarks>
internal static class PressDecodeBench
{
    private static readonly string[] DefaultPresses =
    [
        "random:keep=0.5", "random:keep=0.25", "random:keep=0.1",
        "kivi:bits=4,residual=128", "kivi:bits=2,residual=128",
        "mikv(random):high=int8,low=int2,top=0.2", "zipvl(random):tau=0.95,high=int8,low=int2",
        "leankv(random)", "vidkv", "fp8", "int4",
    ];

    public static void Run(string[] args)
    {
        var contexts = args.Length > 1 ? args[1].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray() : [8192, 32768];
        int rounds = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 3;
        int steps = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 8;
        if (args.Length > 4) CpuThreads.Count = int.Parse(args[4], CultureInfo.InvariantCulture);
        var presses = args.Length > 5 ? args[5].Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : DefaultPresses;

        string config = Path.Combine(LongContextDecodeBench.FindRepo(), "bench", "configs", "smollm2-135m.json");
        using var weights = DummyWeights.Create(HfConfigReader.Read(config), GgmlType.Q8_0, seed: 1);
        var model = new Transformer(weights);
        var c = model.Config;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"SmolLM2-135M shape (dummy Q8_0 weights), {c.NumLayers} layers, {c.NumHeads} q heads / {c.NumKvHeads} KV heads / head dim {c.HeadDim}; {CpuThreads.Count} threads; {rounds} rounds of {steps} decode steps; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC"));
        Console.WriteLine();
        Console.WriteLine("| method | context | KV MB | B/token | decode tok/s (best / median) | attention ms/token (wall, best) | attention CPU ms/token (best) | attention speedup (wall / CPU) | speedup the bytes predict |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
        foreach (int n in contexts)
        {
            int room = rounds * steps + 8;
            var tokens = Enumerable.Range(0, n).Select(i => 1 + i * 7919 % (c.VocabSize - 1)).ToArray();
            using var full = LongContextDecodeBench.Fill(c, KvFormat.F16, n, room);
            Measure(model, full, Math.Min(rounds, 1), steps); // warm-up: tiered JIT of the model and attention kernels, page faults
            var baseline = Measure(model, full, rounds, steps);
            Print("F16 (full cache)", n, full.ByteCount, baseline, baseline);
            foreach (string press in presses)
            {
                using var cache = Build(model, full, press, tokens, n, room);
                var m = Measure(model, cache, rounds, steps);
                Print(press, n, cache.ByteCount, m, baseline);
            }
            using var again = full.Fork();
            Print("F16 (full cache, again)", n, again.ByteCount, Measure(model, again, rounds, steps), baseline);
        }
    }

    private sealed record Result(long Bytes, double BestTokensPerSecond, double MedianTokensPerSecond, double AttentionSeconds, double AttentionCpuSeconds);

    /// <summary>The compressed cache of one method: a fork of the full cache pressed, or a cache in that format.</summary>
    private static PagedKvCache Build(Transformer model, PagedKvCache full, string press, int[] tokens, int n, int room)
    {
        if (press is "fp8" or "int4")
            return LongContextDecodeBench.Fill(model.Config, press == "fp8" ? KvFormat.Fp8E4M3 : KvFormat.Int4, n, room);
        var fork = full.Fork();
        PressRegistry.Parse(press).Compress(new PressContext(model, fork, tokens));
        return fork;
    }

    /// <summary>
    /// Decode rounds through the model on a fork (so every method decodes from the same length), then the attention
    /// alone: every layer's Attend of one random query at the last position, best of 5.
    /// </summary>
    private static Result Measure(Transformer model, PagedKvCache cache, int rounds, int steps)
    {
        var c = model.Config;
        long bytes = cache.ByteCount;
        var speeds = new List<double>();
        if (rounds > 0)
        {
            using var work = cache.Fork();
            model.Forward([1], work); // warm-up: page faults, tiered JIT
            model.Forward([2], work);
            for (int r = 0; r < rounds; r++)
            {
                var sw = Stopwatch.StartNew();
                for (int s = 0; s < steps; s++) model.Forward([(r * steps + s) * 7919 % c.VocabSize], work);
                speeds.Add(steps / sw.Elapsed.TotalSeconds);
            }
        }
        var rng = new Random(5);
        var q = new float[c.NumHeads * c.HeadDim];
        for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        var o = new float[q.Length];
        double attention = double.MaxValue, cpu = double.MaxValue;
        using var process = Process.GetCurrentProcess();
        if (rounds == 0) for (int l = 0; l < c.NumLayers; l++) cache.Attend(l, q, 1, cache.Length - 1, o); // warm-up
        for (int rep = 0; rep < 5; rep++)
        {
            process.Refresh();
            var cpu0 = process.TotalProcessorTime;
            long t0 = Stopwatch.GetTimestamp();
            for (int l = 0; l < c.NumLayers; l++) cache.Attend(l, q, 1, cache.Length - 1, o);
            attention = Math.Min(attention, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            process.Refresh();
            cpu = Math.Min(cpu, (process.TotalProcessorTime - cpu0).TotalSeconds);
        }
        var sorted = speeds.OrderDescending().ToArray();
        return new Result(bytes, sorted.Length > 0 ? sorted[0] : double.NaN, sorted.Length > 0 ? sorted[sorted.Length / 2] : double.NaN, attention, cpu);
    }

    private static void Print(string method, int n, long bytes, Result m, Result baseline) =>
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| {method} | {n} | {bytes / 1e6:F1} | {(double)bytes / n:F0} | {(double.IsNaN(m.BestTokensPerSecond) ? "–" : $"{m.BestTokensPerSecond:F2} / {m.MedianTokensPerSecond:F2}")} | {m.AttentionSeconds * 1e3:F2} | {m.AttentionCpuSeconds * 1e3:F2} | {baseline.AttentionSeconds / m.AttentionSeconds:F2}x / {baseline.AttentionCpuSeconds / m.AttentionCpuSeconds:F2}x | {(double)baseline.Bytes / bytes:F2}x |"));
}
