using System.Diagnostics;
using System.Globalization;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;

namespace KvSharp.Bench.Cache;

/// <summary>
/// Decode attention over an evicted cache: one layer (32 q heads, 8 KV heads, head dim 128) holding N tokens, each
/// head keeping a random share `keep` of them (what a press leaves), one query attended. Shows that eviction frees
/// pool memory and that decode attention time falls with the tokens kept. Best-of-reps wall time. Run with:
/// dotnet run -c Release --project bench/KvSharp.Bench -- press-quick [tokens] [reps] [format] [threads]
/// </summary>
public static class QuickPressBench
{
    private const int Heads = 32, KvHeads = 8, HeadDim = 128;

    /// <summary>Entry point for the quick mode.</summary>
    public static void Run(string[] args)
    {
        int tokens = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 4096;
        int reps = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 21;
        var format = args.Length > 3 ? Enum.Parse<KvFormat>(args[3], ignoreCase: true) : KvFormat.F16;
        if (args.Length > 4) KvSharp.Compute.Cpu.CpuThreads.Count = int.Parse(args[4], CultureInfo.InvariantCulture);
        Console.WriteLine($"{Heads} q heads, {KvHeads} KV heads, head dim {HeadDim}, {tokens} tokens, {format}, threads {KvSharp.Compute.Cpu.CpuThreads.Count}; best of {reps}");
        Console.WriteLine("| keep | pool bytes | decode attention (ms) | vs keep 1 |");
        Console.WriteLine("|---|---|---|---|");
        double baseline = 0;
        foreach (double keep in new[] { 1.0, 0.5, 0.3, 0.2, 0.1 })
        {
            var (bytes, ms) = Measure(tokens, keep, format, reps);
            if (keep == 1.0) baseline = ms;
            Console.WriteLine($"| {keep:F1} | {bytes:N0} | {ms:F3} | {baseline / ms:F2}x |");
        }
    }

    private static (long Bytes, double Ms) Measure(int tokens, double keep, KvFormat format, int reps)
    {
        var rng = new Random(7);
        int row = KvHeads * HeadDim;
        var k = new float[tokens * row];
        var v = new float[tokens * row];
        for (int i = 0; i < k.Length; i++) { k[i] = (float)(rng.NextDouble() * 2 - 1); v[i] = (float)(rng.NextDouble() * 2 - 1); }
        var q = new float[Heads * HeadDim];
        for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() * 2 - 1);
        var o = new float[q.Length];
        using var cache = new PagedKvCache(1, Heads, KvHeads, HeadDim, new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = tokens });
        cache.Append(0, k, v, tokens);
        for (int h = 0; h < KvHeads; h++)
        {
            var evict = new bool[tokens];
            for (int t = 0; t < tokens - 1; t++) evict[t] = rng.NextDouble() >= keep; // the newest token stays
            cache.Evict(0, h, evict);
        }
        double best = double.MaxValue;
        for (int r = 0; r < reps + 1; r++)
        {
            var sw = Stopwatch.StartNew();
            cache.Attend(0, q, 1, tokens - 1, o);
            if (r > 0) best = Math.Min(best, sw.Elapsed.TotalMilliseconds);
        }
        return (cache.PoolLiveBytes, best);
    }
}
