using System.Diagnostics;
using System.Globalization;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;

namespace KvSharp.Bench.Cache;

/// <summary>
/// Decode-attention bandwidth of the paged cache per KV format (issue 3, point 7): one layer of a Llama-3.1-8B
/// attention (32 query heads, 8 KV heads, head dim 128), keys and values in the same format, one query at the last
/// position over N cached tokens. Reports GB/s of KV bytes read (the cache's exact ByteCount / time) and ns per
/// cached token next to this machine's measured memory read bandwidth. Run with:
/// dotnet run -c Release --project bench/KvSharp.Bench -- kv-decode [lengths] [formats] [rounds] [threads]
/// e.g. kv-decode 4096,32768,131072 F16,Int4 3 2 (VidKvKey: VidKV keys with VidKV values)
/// </summary>
/// <remarks>
/// Each round measures every format once (best of a few calls), round-robin, so drift of a shared machine hits all
/// formats alike and the other caches evict this one from the CPU caches in between (as the other layers of a model
/// would); cells are min / median over the rounds.
/// </remarks>
public static class DecodeAttentionBandwidthBench
{
    private const int Heads = 32, KvHeads = 8, HeadDim = 128, CallsPerRound = 3;

    private static readonly KvFormat[] AllFormats =
        [KvFormat.F32, KvFormat.F16, KvFormat.BF16, KvFormat.Fp8E4M3, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary];

    /// <summary>Entry point.</summary>
    public static void Run(string[] args)
    {
        var lengths = args.Length > 1 ? args[1].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray() : [4096, 32768, 131072];
        var formats = args.Length > 2 && args[2] != "all" ? args[2].Split(',').Select(Enum.Parse<KvFormat>).ToArray() : AllFormats;
        int rounds = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 3;
        if (args.Length > 4) CpuThreads.Count = int.Parse(args[4], CultureInfo.InvariantCulture);
        double bandwidth = Kernels.QuickKernelBench.MemoryBandwidth(512L << 20);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"decode attention, {Heads} q heads / {KvHeads} KV heads / head dim {HeadDim}, one layer, {CpuThreads.Count} threads, {rounds} rounds; memory read bandwidth {bandwidth:F1} GB/s; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC"));
        Console.WriteLine();
        Console.WriteLine("| format | tokens | KV MB | ms (min / median) | KV GB/s (best) | % of memory bw | ns/token (best) |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (int n in lengths)
        {
            var caches = formats.Select(f => Fill(f, n)).ToArray();
            var q = Random(new Random(3), Heads * HeadDim);
            var o = new float[q.Length];
            var times = formats.Select(_ => new List<double>()).ToArray();
            // Warm-up: page faults, and tiered JIT (kernels reach optimized code after ~30 calls plus a background compile).
            for (int w = 0; w < 2; w++)
            {
                for (int i = 0; i < caches.Length; i++) caches[i].Attend(0, q, 1, n - 1, o);
                Thread.Sleep(300);
            }
            for (int r = 0; r < rounds; r++)
                for (int i = 0; i < caches.Length; i++)
                {
                    double best = double.MaxValue;
                    for (int c = 0; c < CallsPerRound; c++)
                    {
                        long t0 = Stopwatch.GetTimestamp();
                        caches[i].Attend(0, q, 1, n - 1, o);
                        best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
                    }
                    times[i].Add(best);
                }
            for (int i = 0; i < caches.Length; i++)
            {
                var t = times[i].Order().ToArray();
                double min = t[0], median = t[t.Length / 2], bytes = caches[i].ByteCount;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {formats[i]} | {n} | {bytes / 1e6:F1} | {min * 1e3:F2} / {median * 1e3:F2} | {bytes / min / 1e9:F1} | {bytes / min / 1e9 / bandwidth * 100:F0}% | {min * 1e9 / n:F1} |"));
                caches[i].Dispose();
            }
        }
    }

    /// <summary>A one-layer cache holding <paramref name="tokens"/> random tokens (appended in chunks: the float input of 128K tokens would be 1 GiB).</summary>
    private static PagedKvCache Fill(KvFormat format, int tokens)
    {
        const int chunk = 1024;
        var rng = new Random(7);
        int row = KvHeads * HeadDim;
        var k = Random(rng, chunk * row);
        var v = Random(rng, chunk * row);
        var cache = new PagedKvCache(1, Heads, KvHeads, HeadDim, new PagedKvCacheOptions { KeyFormat = format, ValueFormat = ValueFormatFor(format), MaxTokens = tokens });
        for (int t = 0; t < tokens; t += chunk)
        {
            int m = Math.Min(chunk, tokens - t);
            cache.Append(0, k.AsSpan(0, m * row), v.AsSpan(0, m * row), m);
        }
        return cache;
    }

    /// <summary>The value format benchmarked beside <paramref name="keys"/>: the same, but VidKV values beside VidKV keys.</summary>
    internal static KvFormat ValueFormatFor(KvFormat keys) => keys == KvFormat.VidKvKey ? KvFormat.VidKvValue : keys;

    private static float[] Random(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
