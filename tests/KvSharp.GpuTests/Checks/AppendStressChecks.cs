using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cuda;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// Issue 7's intermittent fault as a repeatable check: the batch-1 decode graph whose QKV product appends into the paged
/// cache in its epilogue (paged_qkv_rope_append) and encodes a KV head's full float32 residual there, with the pipelined
/// attention launched programmatically after it, many residual fills in a row. The single transformer check fills each
/// head's residual once per case (one decode step of 30); this one fills it every 32 (or 16) steps of 128, over as many
/// runs as <c>$KVSHARP_STRESS_RUNS</c> asks (default 8), each a fresh cache from the same prompt, and every run's greedy
/// tokens must be the CPU engine's over an F32 cache (lossless blocks: the same tokens at every step).
/// </summary>
public static class AppendStressChecks
{
    private static CudaDevice Dev => CudaDevice.Shared;

    /// <summary>Runs of the stress check: <c>$KVSHARP_STRESS_RUNS</c>, default 8 (about 0.1 s each on an H100).</summary>
    public static int Runs => int.TryParse(Environment.GetEnvironmentVariable("KVSHARP_STRESS_RUNS"), out int n) && n > 0 ? n : 8;

    /// <summary>
    /// Greedy decode of 128 steps over an F32 paged cache (head dimension 128, 8 query and 2 KV heads, 2 layers, the pipelined
    /// kernel) from a 45-token prompt, runs alternating 32- and 16-token blocks (4 or 8 residual fills per head and layer),
    /// against the CPU engine's tokens. A failing run is reported with the step where it left the CPU's tokens and the
    /// cache length there, so a divergence can be placed against the fills (length a multiple of the block tokens).
    /// </summary>
    public static string FillsMatchCpu()
    {
        var rnd = new RandomData();
        const int hd = 128, steps = 128;
        var config = PagedChecks.Shape(8, 2, hd) with
        {
            NumLayers = 2,
            HiddenSize = 8 * hd,
            IntermediateSize = 768,
            RopeTheta = 10000,
            RopeStyle = RopeStyle.HalfSplit,
        };
        using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
        using var gpu = new CudaTransformer(Dev, weights, DeviceWeightType.F32);
        var cpu = new Transformer(weights);
        var prompt = Enumerable.Range(0, 45).Select(_ => rnd.Next(config.VocabSize)).ToArray();
        int capacity = prompt.Length + steps + 1;
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = capacity };
        var cpuTokens = new List<int>();
        using (var cpuCache = new PagedKvCache(config, options))
        {
            cpuTokens.Add(KvzipChecks.ArgMax(cpu.Forward(prompt, cpuCache)));
            for (int i = 1; i < steps; i++) cpuTokens.Add(KvzipChecks.ArgMax(cpu.Forward([cpuTokens[^1]], cpuCache)));
        }

        var failures = new List<string>();
        int runs = Runs;
        for (int run = 0; run < runs; run++)
        {
            int blockTokens = run % 2 == 0 ? 32 : 16;
            IReadOnlyList<int> tokens;
            try
            {
                using var cache = gpu.CreatePagedCache(options with { BlockTokens = blockTokens }, capacity);
                if (!cache.FusesAppend) throw new CheckFailedException("the cache does not take the fused append");
                cache.AttentionKernel = PagedAttentionKernel.Pipelined;
                tokens = gpu.GenerateGreedy(prompt, steps, cache);
            }
            catch (CudaException e)
            {
                // The context is lost after a fault: later runs cannot start.
                throw new CheckFailedException($"run {run + 1} of {runs} ({blockTokens}-token blocks, seed {rnd.Seed}) faulted after "
                    + $"{failures.Count} divergent runs ({string.Join("; ", failures)}): {e.Message}");
            }
            int same = tokens.Zip(cpuTokens).TakeWhile(p => p.First == p.Second).Count();
            if (same != steps) failures.Add($"run {run + 1} ({blockTokens}-token blocks) left the CPU's tokens at step {same} (cache length {prompt.Length + same})");
        }
        if (failures.Count > 0)
            throw new CheckFailedException($"{failures.Count} of {runs} runs diverged (seed {rnd.Seed}): {string.Join("; ", failures)}");
        return $"{runs} runs of {steps} greedy steps (32- and 16-token blocks alternately) = the CPU engine's tokens (seed {rnd.Seed})";
    }
}
