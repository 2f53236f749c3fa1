using System.Diagnostics;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Registry;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation;
using KvSharp.GpuTests.Checks;

namespace KvSharp.GpuTests.Bench;

/// <summary>
/// The presses of <c>ask --device cuda</c> timed against the CPU presses of the same machine on the needle model (bfloat16
/// weights on the GPU as ask loads them, F16 caches on both): per context length a needle haystack, one CPU prefill and
/// each CPU press over a fork of it (<c>IKvPress.Compress</c>: SnapKV's window and H2O's chunks re-run, scores, budget,
/// eviction); on the GPU a plain prefill (the better of two), then per press its observing prefill and its compression
/// (scores read back, the CPU budget on the host, eviction on the device; the better of two). The GPU press's cost is its
/// prefill's extra over the plain one plus its compression. Every press runs twice on both engines; the second round is
/// reported (the first compiles the host code).
/// </summary>
public static class PressBench
{
    /// <summary>Times every press of <paramref name="presses"/> at every length of <paramref name="contexts"/>; writes a table to <paramref name="log"/>.</summary>
    public static void Run(string needleModel, IReadOnlyList<int> contexts, IReadOnlyList<string> presses, TextWriter log)
    {
        var device = CudaDevice.Shared;
        log.WriteLine($"device: {device}, CPU: {Environment.ProcessorCount} logical cores");
        using var model = LanguageModel.Load(needleModel);
        using var gpu = new CudaTransformer(device, model.Weights, DeviceWeightType.BF16);
        log.WriteLine("| context | press | CPU press | GPU prefill (observing) | GPU compress | GPU press (extra over the plain prefill) | CPU / GPU |");
        log.WriteLine("|---|---|---|---|---|---|---|");
        foreach (int length in contexts)
        {
            var (text, _) = KvzipChecks.NeedlePrompt(new RandomData(), length / 5);
            var tokens = model.Encode(text);
            tokens = tokens[..Math.Min(length, tokens.Length)];
            int capacity = tokens.Length + 600; // room for KVzip's repeat run of chunk 512
            var options = new PagedKvCacheOptions { KeyFormat = KvFormat.F16, ValueFormat = KvFormat.F16, MaxTokens = capacity };

            var clock = Stopwatch.StartNew();
            using var cpuCache = new PagedKvCache(model.Config, options);
            model.Transformer.Forward(tokens, cpuCache);
            var cpuPrefill = clock.Elapsed;

            // Two rounds over every press, the first unreported: the host code (budgets, top-k, read-backs, the CPU presses)
            // is compiled by the JIT on first use and optimized later, which would otherwise burden whichever press runs first.
            for (int round = 0; round < 2; round++)
            {
                bool report = round == 1;
                TimeSpan plain = TimeSpan.MaxValue;
                for (int run = 0; run < 3; run++) // the first run of the first round also loads the kernels
                {
                    using var cache = gpu.CreatePagedCache(options, capacity);
                    clock.Restart();
                    gpu.Forward(tokens, cache);
                    if (run > 0) plain = Min(plain, clock.Elapsed);
                }
                if (report) log.WriteLine($"| {tokens.Length} | none (prefill) | {Ms(cpuPrefill)} | {Ms(plain)} | | | {cpuPrefill / plain:F1}x |");

                foreach (string pressText in presses)
                {
                    var cpuPress = PressRegistry.Parse(pressText);
                    using var fork = cpuCache.Fork();
                    clock.Restart();
                    cpuPress.Compress(new PressContext(model.Transformer, fork, tokens) { Tokenizer = model.Tokenizer, ProtectedPrefix = 1 });
                    var cpuTime = clock.Elapsed;

                    var press = CudaContextPresses.From(cpuPress);
                    TimeSpan prefill = TimeSpan.MaxValue, compress = TimeSpan.MaxValue, total = TimeSpan.MaxValue;
                    for (int run = 0; run < 2; run++)
                    {
                        using var cache = gpu.CreatePagedCache(options, capacity);
                        clock.Restart();
                        press.Prefill(gpu, cache, tokens);
                        var p = clock.Elapsed;
                        clock.Restart();
                        press.Compress(gpu, cache, tokens, model.Tokenizer, null, 1, out _);
                        var c = clock.Elapsed;
                        if (p + c < total) (prefill, compress, total) = (p, c, p + c);
                    }
                    var extra = total - plain;
                    if (report)
                        log.WriteLine($"| {tokens.Length} | {cpuPress.Text} | {Ms(cpuTime)} | {Ms(prefill)} | {Ms(compress)} | {Ms(extra)} | " +
                            $"{cpuTime / Max(extra, TimeSpan.FromMilliseconds(0.1)):F1}x |");
                }
            }
        }
    }

    private static string Ms(TimeSpan t) => $"{t.TotalMilliseconds:F1} ms";

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;
}
