using System.Diagnostics;
using System.Globalization;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Bench.EndToEnd;

/// <summary>
/// End-to-end decode tokens/s of a dummy model at long context per KV format (issue 3, point 7): the SmolLM2-135M
/// shape (30 layers, 9 query heads, 3 KV heads, head dim 64) with Q8_0 random weights (143 MB read per token), its
/// paged cache filled with N random tokens per layer (a prefill of 32K tokens would take minutes on a small CPU and
/// reads the cache no differently), then decode steps through the whole model. Run with:
/// dotnet run -c Release --project bench/KvSharp.Bench -- kv-e2e [contexts] [formats] [rounds] [tokensPerRound] [threads]
/// e.g. kv-e2e 8192,32768 F16,Int4,Int2 3 8
/// </summary>
/// <remarks>Rounds go round-robin over the formats (drift of a shared machine hits all alike); cells are min / median over rounds.</remarks>
internal static class LongContextDecodeBench
{
    public static void Run(string[] args)
    {
        var contexts = args.Length > 1 ? args[1].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray() : [8192, 32768];
        var formats = args.Length > 2 ? args[2].Split(',').Select(Enum.Parse<KvFormat>).ToArray() : [KvFormat.F16, KvFormat.Int4, KvFormat.Int2];
        int rounds = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 3;
        int steps = args.Length > 4 ? int.Parse(args[4], CultureInfo.InvariantCulture) : 8;
        if (args.Length > 5) CpuThreads.Count = int.Parse(args[5], CultureInfo.InvariantCulture);

        string config = Path.Combine(FindRepo(), "bench", "configs", "smollm2-135m.json");
        using var weights = DummyWeights.Create(HfConfigReader.Read(config), GgmlType.Q8_0, seed: 1);
        var model = new Transformer(weights);
        var c = model.Config;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"SmolLM2-135M shape (dummy Q8_0 weights), {c.NumLayers} layers, {c.NumHeads} q heads / {c.NumKvHeads} KV heads / head dim {c.HeadDim}; {CpuThreads.Count} threads; {rounds} rounds of {steps} decode steps; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC"));
        Console.WriteLine();
        Console.WriteLine("| KV format | context | KV MB | decode tok/s (best / median) | ms/token (best) |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach (int n in contexts)
        {
            var caches = formats.Select(f => Fill(c, f, n, rounds * steps + 4)).ToArray();
            int vocab = c.VocabSize;
            // Warm-up: page faults, and tiered JIT (optimized code after ~30 calls plus a background compile).
            for (int w = 0; w < 2; w++)
            {
                foreach (var cache in caches) model.Forward([1 + w], cache);
                Thread.Sleep(300);
            }
            var speeds = formats.Select(_ => new List<double>()).ToArray();
            for (int r = 0; r < rounds; r++)
                for (int i = 0; i < caches.Length; i++)
                {
                    var sw = Stopwatch.StartNew();
                    for (int s = 0; s < steps; s++) model.Forward([(r * steps + s) * 7919 % vocab], caches[i]);
                    speeds[i].Add(steps / sw.Elapsed.TotalSeconds);
                }
            for (int i = 0; i < caches.Length; i++)
            {
                var s = speeds[i].OrderDescending().ToArray();
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {formats[i]} | {n} | {caches[i].ByteCount / 1e6:F0} | {s[0]:F2} / {s[s.Length / 2]:F2} | {1e3 / s[0]:F1} |"));
                caches[i].Dispose();
            }
        }
    }

    /// <summary>A cache for <paramref name="config"/> holding <paramref name="tokens"/> random tokens in every layer, with room for <paramref name="more"/>.</summary>
    internal static PagedKvCache Fill(ModelConfig config, KvFormat format, int tokens, int more)
    {
        const int chunk = 1024;
        var rng = new Random(11);
        int row = config.NumKvHeads * config.HeadDim;
        var k = new float[chunk * row]; var v = new float[chunk * row];
        for (int i = 0; i < k.Length; i++) { k[i] = (float)(rng.NextDouble() * 4 - 2); v[i] = (float)(rng.NextDouble() * 2 - 1); }
        var cache = new PagedKvCache(config, new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = tokens + more });
        for (int t = 0; t < tokens; t += chunk)
        {
            int m = Math.Min(chunk, tokens - t);
            for (int l = 0; l < config.NumLayers; l++) cache.Append(l, k.AsSpan(0, m * row), v.AsSpan(0, m * row), m);
        }
        return cache;
    }

    /// <summary>The repository root (the folder holding KvSharp.slnx) above the running binary.</summary>
    internal static string FindRepo()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "KvSharp.slnx"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("run from inside the repository");
    }
}
