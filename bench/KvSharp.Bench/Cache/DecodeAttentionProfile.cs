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
/// dotnet run -c Release --project bench/KvSharp.Bench -- kv-profile [tokens] [formats] [group] [headDim] [repeats]
/// </summary>
public static class DecodeAttentionProfile
{

    /// <summary>Entry point.</summary>
    public static void Run(string[] args)
    {
        int n = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 32768;
        var formats = args.Length > 2 && args[2] != "all" ? args[2].Split(',').Select(Enum.Parse<KvFormat>).ToArray()
            : [KvFormat.F32, KvFormat.F16, KvFormat.BF16, KvFormat.Fp8E4M3, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary];
        int group = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 4;
        int headDim = args.Length > 4 ? int.Parse(args[4], CultureInfo.InvariantCulture) : 128;
        int repeats = args.Length > 5 ? int.Parse(args[5], CultureInfo.InvariantCulture) : 10;
        CpuThreads.Count = 1;
        Console.WriteLine($"one KV head, group {group}, head dim {headDim}, {n} tokens, 1 thread; thread CPU ns per token (min of {repeats} after 35 warm-up calls)");
        Console.WriteLine();
        Console.WriteLine("| format | paged Attend | scores kernel | softmax | values kernel | sum of parts | overhead |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        var rng = new Random(5);
        foreach (var f in formats)
        {
            var keyLayout = BlockLayout.ForKeys(f, headDim);
            var vf = DecodeAttentionBandwidthBench.ValueFormatFor(f);
            var valueLayout = BlockLayout.ForValues(vf, headDim);
            int b = keyLayout.Tokens, blocks = n / b;
            var k = Random(rng, n * headDim); var v = Random(rng, n * headDim);
            using var cache = new PagedKvCache(1, group, 1, headDim, new PagedKvCacheOptions { KeyFormat = f, ValueFormat = vf, MaxTokens = n });
            cache.Append(0, k, v, n);
            var keyBytes = new byte[blocks][]; var valueBytes = new byte[blocks][];
            for (int i = 0; i < blocks; i++)
            {
                keyBytes[i] = new byte[keyLayout.ByteSize]; valueBytes[i] = new byte[valueLayout.ByteSize];
                BlockCodec.Encode(keyLayout, k.AsSpan(i * b * headDim, b * headDim), b, keyBytes[i]);
                BlockCodec.Encode(valueLayout, v.AsSpan(i * b * headDim, b * headDim), b, valueBytes[i]);
            }
            var q = Random(rng, group * headDim);
            TensorScale(q, 1f / MathF.Sqrt(headDim));
            var o = new float[group * headDim];
            var scores = new float[group * b];
            var state = new OnlineSoftmax(group, headDim);

            double full = Min(repeats, () => cache.Attend(0, q, 1, n - 1, o));
            double sc = Min(repeats, () => { for (int i = 0; i < blocks; i++) BlockAttention.Scores(keyLayout, keyBytes[i], b, q, group, scores); });
            double sm = Min(repeats, () => { state.Reset(); for (int i = 0; i < blocks; i++) { scores.AsSpan().Fill(0.01f * (i & 7)); state.Absorb(scores, b); } });
            Array.Fill(scores, 0.03f);
            double va = Min(repeats, () => { for (int i = 0; i < blocks; i++) BlockAttention.AccumulateValues(valueLayout, valueBytes[i], b, scores, group, state.Accumulators); });
            double parts = sc + sm + va;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {f} | {full / n * 1e9:F1} | {sc / n * 1e9:F1} | {sm / n * 1e9:F1} | {va / n * 1e9:F1} | {parts / n * 1e9:F1} | {(full - parts) / n * 1e9:F1} |"));
        }
    }

    private static double Min(int repeats, Action body)
    {
        // Warm-up past tiered JIT: enough calls for every kernel to be queued for optimization, then time to compile it.
        for (int w = 0; w < 35; w++) body();
        Thread.Sleep(300);
        body();
        double best = double.MaxValue;
        for (int r = 0; r < repeats; r++)
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
