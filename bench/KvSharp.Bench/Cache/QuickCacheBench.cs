using System.Diagnostics;
using System.Globalization;
using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;

namespace KvSharp.Bench.Cache;

/// <summary>
/// Stopwatch comparison (seconds, not BenchmarkDotNet's minutes) of one layer's attention through the float
/// cache and the paged cache per format: decode (one query over N tokens) and prefill (P queries over P tokens).
/// Best-of-reps wall time, because the dev box is shared. Run with:
/// dotnet run -c Release --project bench/KvSharp.Bench -- cache-quick [decodeTokens] [prefillTokens] [reps] [formats] [threads]
/// </summary>
public static class QuickCacheBench
{
    private const int Heads = 32, KvHeads = 8, HeadDim = 128;

    /// <summary>Entry point for the quick mode.</summary>
    public static void Run(string[] args)
    {
        int decode = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 4096;
        int prefill = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 512;
        int reps = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 7;
        var formats = args.Length > 4 ? args[4].Split(',').Select(Enum.Parse<KvFormat>).ToArray()
            : new[] { KvFormat.F32, KvFormat.F16, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2 };
        if (args.Length > 5) KvSharp.Compute.Cpu.CpuThreads.Count = int.Parse(args[5], CultureInfo.InvariantCulture);
        Console.WriteLine($"{Heads} q heads, {KvHeads} KV heads, head dim {HeadDim}, threads {KvSharp.Compute.Cpu.CpuThreads.Count}; best of {reps}");
        Console.WriteLine($"| cache | decode over {decode} (ms) | prefill {prefill}x{prefill} (ms) |");
        Console.WriteLine("|---|---|---|");
        Report("float", () => new FullPrecisionKvCache(1, Heads, KvHeads, HeadDim, Math.Max(decode, prefill)), decode, prefill, reps);
        foreach (var f in formats)
            Report($"paged {f}", () => new PagedKvCache(1, Heads, KvHeads, HeadDim,
                new PagedKvCacheOptions { KeyFormat = f, ValueFormat = f, MaxTokens = Math.Max(decode, prefill) }), decode, prefill, reps);
    }

    private static void Report(string name, Func<IKvCache> make, int decode, int prefill, int reps)
    {
        double d = Measure(make, decode, 1, reps), p = Measure(make, prefill, prefill, Math.Max(1, reps / 2));
        Console.WriteLine($"| {name} | {d:F2} | {p:F1} |");
    }

    /// <summary>Fills a cache with <paramref name="tokens"/> random tokens and times Attend for the last <paramref name="queries"/> positions.</summary>
    private static double Measure(Func<IKvCache> make, int tokens, int queries, int reps)
    {
        var rng = new Random(7);
        int row = KvHeads * HeadDim;
        var k = new float[tokens * row];
        var v = new float[tokens * row];
        for (int i = 0; i < k.Length; i++) { k[i] = (float)(rng.NextDouble() * 2 - 1); v[i] = (float)(rng.NextDouble() * 2 - 1); }
        var q = new float[queries * Heads * HeadDim];
        for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        var o = new float[q.Length];
        using var cache = make();
        cache.Append(0, k, v, tokens);
        double best = double.MaxValue;
        for (int r = 0; r < reps + 1; r++)
        {
            var sw = Stopwatch.StartNew();
            cache.Attend(0, q, queries, tokens - queries, o);
            if (r > 0) best = Math.Min(best, sw.Elapsed.TotalMilliseconds);
        }
        return best;
    }
}
