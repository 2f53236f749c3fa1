using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Models;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// Saved KV caches on the device (<c>kvsharp generate --device cuda --load-cache / --save-cache</c>): a cache saved on the
/// CPU, loaded and uploaded, continues on the device as the device continues its own prefill; a device cache read back
/// (<see cref="CudaPagedKvCache.Download"/>), saved and loaded keeps every block byte and position.
/// </summary>
public static class CacheFileChecks
{
    private static CudaDevice Dev => CudaDevice.Shared;
    private const string Fingerprint = "gpu-check";

    /// <summary>
    /// A Llama-shaped float32 model of head dimension 64; per format: (a) the device prefills prefix + continuation and
    /// decodes; (b) the CPU prefills the prefix, saves, loads, the device uploads it and runs the continuation; (c) the same
    /// upload without the file; (d) the CPU alone. (b) = (c) token for token in every format (the same bytes), and with
    /// F32 blocks (a) = (b) = (d); for INT4 the agreement is reported (the device's keys differ from the CPU's by rounding, a
    /// code may flip). A CPU-pressed cache (per-head evictions) takes the same path.
    /// </summary>
    public static string LoadedCacheDecodesOnDevice()
    {
        var rnd = new RandomData();
        using var llama = new SmallLlama(rnd);
        var (config, gpu, cpu) = (llama.Config, llama.Gpu, llama.Cpu);
        var prefix = llama.Tokens(45);
        var next = llama.Tokens(6);
        const int steps = 24;
        int capacity = prefix.Length + next.Length + steps + 1;
        var report = new List<string>();
        using var file = new TempFile();
        foreach (var (format, evict) in new[] { (KvFormat.F32, false), (KvFormat.Int4, false), (KvFormat.F32, true), (KvFormat.Int2, true) })
        {
            string name = $"{format}{(evict ? " pressed" : "")}";
            var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = capacity };
            using var cpuCache = llama.CpuPrefill(prefix, options);
            if (evict) EvictEveryThird(cpuCache, config, rnd);
            cpuCache.Save(file.Path, Fingerprint);

            IReadOnlyList<int> DeviceAfter(PagedKvCache source)
            {
                using var uploaded = CudaPagedKvCache.Upload(Dev, config, source, capacity);
                return gpu.GenerateGreedy(next, steps, uploaded);
            }
            IReadOnlyList<int> loaded;
            using (var fromFile = PagedKvCache.Load(file.Path, config, Fingerprint, capacity)) loaded = DeviceAfter(fromFile);
            var direct = DeviceAfter(cpuCache);
            SameTokens($"{name}: after save/load vs the same upload without the file", loaded, direct, rnd.Seed);

            var cpuTokens = CpuGreedy(cpu, cpuCache, next, steps, config.VocabSize);
            int asCpu = Agreement(loaded, cpuTokens);
            if (evict)
            {
                if (format == KvFormat.F32) SameTokens($"{name}: device after load vs the CPU engine", loaded, cpuTokens, rnd.Seed);
                report.Add($"{name}: {asCpu}/{steps} as the CPU");
                continue;
            }
            using var fresh = gpu.CreatePagedCache(options, capacity);
            var whole = gpu.GenerateGreedy([.. prefix, .. next], steps, fresh);
            if (format == KvFormat.F32)
            {
                SameTokens($"{name}: device after load vs the device's own prefill", loaded, whole, rnd.Seed);
                SameTokens($"{name}: device after load vs the CPU engine", loaded, cpuTokens, rnd.Seed);
            }
            report.Add($"{name}: {Agreement(loaded, whole)}/{steps} as the device's own prefill, {asCpu}/{steps} as the CPU");
        }
        return string.Join("; ", report) + $" (seed {rnd.Seed})";
    }

    /// <summary>
    /// A device cache read back: after a device prefill (blocks encoded on the device, a partial residual) and after a device
    /// eviction of an uploaded cache, <see cref="CudaPagedKvCache.Download"/> holds the device's blocks byte for byte at the
    /// expected positions (every position for the prefill; the CPU eviction's kept positions for the eviction), survives a
    /// save and load, and uploaded again decodes exactly as the device cache it came from.
    /// </summary>
    public static string DownloadedCacheMatchesDevice()
    {
        var rnd = new RandomData();
        using var llama = new SmallLlama(rnd);
        var (config, gpu) = (llama.Config, llama.Gpu);
        var prefix = llama.Tokens(77);
        var next = llama.Tokens(5);
        const int steps = 16;
        int capacity = prefix.Length + next.Length + steps + 1;
        var report = new List<string>();
        using var file = new TempFile();
        foreach (var format in new[] { KvFormat.F16, KvFormat.Int4 })
        {
            var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = capacity };
            // The device's own prefill, read back.
            using (var device = gpu.CreatePagedCache(options, capacity))
            {
                gpu.Forward(prefix, device);
                var expected = Enumerable.Range(0, prefix.Length).ToArray();
                int blocks = SameAsDevice($"{format} prefill", device, config, file.Path, capacity, _ => expected);
                var afterDownload = ContinueUploaded(gpu, config, file.Path, capacity, next, steps);
                var onDevice = gpu.GenerateGreedy(next, steps, device);
                SameTokens($"{format} prefill: decode of the downloaded cache vs the device cache", afterDownload, onDevice, rnd.Seed);
                report.Add($"{format} prefill: {blocks} blocks");
            }
            // A CPU cache uploaded, evicted on the device; the CPU evicts the same tokens.
            using var cpuCache = llama.CpuPrefill(prefix, options);
            using var uploaded = CudaPagedKvCache.Upload(Dev, config, cpuCache, capacity);
            var drop = new bool[uploaded.HeadCount][];
            for (int l = 0; l < config.NumLayers; l++)
                for (int g = 0; g < config.NumKvHeads; g++)
                {
                    var storage = cpuCache.ReadStore(l, g).StoragePositions();
                    var mask = storage.Select(_ => rnd.Next(4) == 0).ToArray();
                    drop[uploaded.HeadIndex(l, 0, g)] = mask;
                    cpuCache.Evict(l, g, storage.Where((_, i) => mask[i]).ToHashSet());
                }
            uploaded.Evict(drop);
            SameAsDevice($"{format} evicted", uploaded, config, file.Path, capacity, h => [.. cpuCache.Positions(h / config.NumKvHeads, h % config.NumKvHeads)]);
            var evictedAfterDownload = ContinueUploaded(gpu, config, file.Path, capacity, next, steps);
            SameTokens($"{format} evicted: decode of the downloaded cache vs the device cache", evictedAfterDownload, gpu.GenerateGreedy(next, steps, uploaded), rnd.Seed);
            report.Add($"{format} evicted: {uploaded.HeadLengths().Sum()} tokens kept");
        }
        return string.Join("; ", report) + $" (seed {rnd.Seed})";
    }

    /// <summary>
    /// Downloads <paramref name="device"/>, saves and loads it, and compares every head: the same blocks (layouts, counts,
    /// bytes) and residual rows as the device holds, at positions <paramref name="expected"/>(layer · kvHeads + head). Returns the blocks compared.
    /// </summary>
    private static int SameAsDevice(string what, CudaPagedKvCache device, ModelConfig config, string path, int capacity, Func<int, int[]> expected)
    {
        using (var downloaded = device.Download()) downloaded.Save(path, Fingerprint);
        using var loaded = PagedKvCache.Load(path, config, Fingerprint, capacity);
        if (loaded.Length != device.Length) throw new CheckFailedException($"{what}: the downloaded cache's length is {loaded.Length}, the device's {device.Length}");
        int blocks = 0;
        for (int l = 0; l < config.NumLayers; l++)
            for (int g = 0; g < config.NumKvHeads; g++)
            {
                string where = $"{what} layer {l} head {g}";
                blocks += PagedChecks.SameHead(where, loaded.ReadStore(l, g), device.ReadHead(l, g), config.HeadDim);
                var want = expected(l * config.NumKvHeads + g);
                var got = loaded.ReadStore(l, g).StoragePositions().Order().ToArray();
                if (!got.SequenceEqual(want))
                    throw new CheckFailedException($"{where}: positions [{string.Join(",", got)}], expected [{string.Join(",", want)}]");
            }
        return blocks;
    }

    /// <summary>Loads the cache at <paramref name="path"/>, uploads it and decodes greedily after <paramref name="next"/>.</summary>
    private static IReadOnlyList<int> ContinueUploaded(CudaTransformer gpu, ModelConfig config, string path, int capacity, int[] next, int steps)
    {
        using var loaded = PagedKvCache.Load(path, config, Fingerprint, capacity);
        using var uploaded = CudaPagedKvCache.Upload(Dev, config, loaded, capacity);
        return gpu.GenerateGreedy(next, steps, uploaded);
    }

    /// <summary>Drops a random third of every head's tokens but the first (a per-head press on the CPU).</summary>
    private static void EvictEveryThird(PagedKvCache cache, ModelConfig config, RandomData rnd)
    {
        for (int l = 0; l < config.NumLayers; l++)
            for (int g = 0; g < config.NumKvHeads; g++)
                cache.Evict(l, g, cache.Positions(l, g).Skip(1).Where(_ => rnd.Next(3) == 0).ToHashSet());
    }

    private static List<int> CpuGreedy(Transformer cpu, PagedKvCache source, int[] next, int steps, int vocab)
    {
        using var cache = source.Fork();
        var tokens = new List<int> { ArgMax(cpu.Forward(next, cache), vocab) };
        while (tokens.Count < steps) tokens.Add(ArgMax(cpu.Forward([tokens[^1]], cache), vocab));
        return tokens;
    }

    private static int Agreement(IReadOnlyList<int> a, IReadOnlyList<int> b) => a.Zip(b).TakeWhile(p => p.First == p.Second).Count();

    private static void SameTokens(string what, IReadOnlyList<int> got, IReadOnlyList<int> expected, int seed)
    {
        int same = Agreement(got, expected);
        if (same != expected.Count || got.Count != expected.Count)
            throw new CheckFailedException($"{what}: tokens differ at step {same} (seed {seed}): [{string.Join(",", got)}] vs [{string.Join(",", expected)}]");
    }

    private static int ArgMax(ReadOnlySpan<float> v, int vocab)
    {
        int best = 0;
        for (int i = 1; i < vocab; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    /// <summary>A temporary file path, deleted afterwards.</summary>
    private sealed class TempFile : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"kvsharp-gpu-{Guid.NewGuid():N}.kvc");

        public void Dispose() => File.Delete(Path);
    }
}
