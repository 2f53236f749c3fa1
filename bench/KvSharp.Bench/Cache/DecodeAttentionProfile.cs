using System.Globalization;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;

namespace KvSharp.Bench.Cache;

/// <summary>
/// Where decode attention's time goes, per format: one KV head with a group of 4 query heads over N tokens, on one
/// thread, measured in thread CPU time (robust to a shared machine). Compares the full paged path
/// (<see cref="PagedKvCache.Attend"/>) with its parts run alone over the same encoded blocks: the score kernel, the
/// online softmax, the value kernel. What the parts do not explain is per-block overhead of the paged path. Run with:
/// dotnet run -c Release --project bench/KvSharp.Bench -- kv-profile [tokens] [formats] [group]
/// </summary>
public static class DecodeAttentionProfile
{
    private const int HeadDim = 128, Repeats = 10;

    /// <summary>Entry point.</summary>
    public static void Run(string[] args)
    {
        int n = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 32768;
        var formats = args.Length > 2 && args[2] != "all" ? args[2].Split(',').Select(Enum.Parse<KvFormat>).ToArray()
            : [KvFormat.F32, KvFormat.F16, KvFormat.BF16, KvFormat.Fp8E4M3, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary];
        int group = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 4;
        CpuThreads.Count = 1;
        Console.WriteLine($"one KV head, group {group}, head dim {HeadDim}, {n} tokens, 1 thread; thread CPU ns per token (min of {Repeats} after 35 warm-up calls)");
        Console.WriteLine();
        Console.WriteLine("| format | paged Attend | scores kernel | softmax | values kernel | sum of parts | overhead |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        var rng = new Random(5);
        foreach (var f in formats)
        {
            var keyLayout = BlockLayout.ForKeys(f, HeadDim);
            var valueLayout = BlockLayout.ForValues(f, HeadDim);
            int b = keyLayout.Tokens, blocks = n / b;
            var k = Random(rng, n * HeadDim); var v = Random(rng, n * HeadDim);
            using var cache = new PagedKvCache(1, group, 1, HeadDim, new PagedKvCacheOptions { KeyFormat = f, ValueFormat = f, MaxTokens = n });
            cache.Append(0, k, v, n);
            var keyBytes = new byte[blocks][]; var valueBytes = new byte[blocks][];
            for (int i = 0; i < blocks; i++)
            {
                keyBytes[i] = new byte[keyLayout.ByteSize]; valueBytes[i] = new byte[valueLayout.ByteSize];
                BlockCodec.Encode(keyLayout, k.AsSpan(i * b * HeadDim, b * HeadDim), b, keyBytes[i]);
                BlockCodec.Encode(valueLayout, v.AsSpan(i * b * HeadDim, b * HeadDim), b, valueBytes[i]);
            }
            var q = Random(rng, group * HeadDim);
            TensorScale(q, 1f / MathF.Sqrt(HeadDim));
            var o = new float[group * HeadDim];
            var scores = new float[group * b];
            var state = new OnlineSoftmax(group, HeadDim);

            double full = Min(() => cache.Attend(0, q, 1, n - 1, o));
            double sc = Min(() => { for (int i = 0; i < blocks; i++) BlockAttention.Scores(keyLayout, keyBytes[i], b, q, group, scores); });
            double sm = Min(() => { state.Reset(); for (int i = 0; i < blocks; i++) { scores.AsSpan().Fill(0.01f * (i & 7)); state.Absorb(scores, b); } });
            Array.Fill(scores, 0.03f);
            double va = Min(() => { for (int i = 0; i < blocks; i++) BlockAttention.AccumulateValues(valueLayout, valueBytes[i], b, scores, group, state.Accumulators); });
            double parts = sc + sm + va;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {f} | {full / n * 1e9:F1} | {sc / n * 1e9:F1} | {sm / n * 1e9:F1} | {va / n * 1e9:F1} | {parts / n * 1e9:F1} | {(full - parts) / n * 1e9:F1} |"));
        }
    }

    private static double Min(Action body)
    {
        // Warm-up past tiered JIT: enough calls for every kernel to be queued for optimization, then time to compile it.
        for (int w = 0; w < 35; w++) body();
        Thread.Sleep(300);
        body();
        double best = double.MaxValue;
        for (int r = 0; r < Repeats; r++)
        {
            double t0 = ThreadCpuTime.Seconds();
            body();
            best = Math.Min(best, ThreadCpuTime.Seconds() - t0);
        }
        return best;
    }

    private static void TensorScale(float[] x, float s)
    {
        for (int i = 0; i < x.Length; i++) x[i] *= s;
    }

    private static float[] Random(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
