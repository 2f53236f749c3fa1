using KvSharp.Cache.Paged;
using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Generation.Sampling;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// The GPU forward pass against the CPU engine (<see cref="Transformer"/> over a paged float16 cache of
/// one-token blocks, so every token's K and V are rounded to float16 on both sides; the default 32-token
/// blocks would keep a partial block in float32 and differ by the rounding, ~8e-4 of the logits):
/// logits of every prompt position and greedy continuations.
/// </summary>
public static class ModelChecks
{
    /// <summary>stories260K (F32 GGUF, interleaved RoPE, GQA, tied output): float32 device weights give the CPU's greedy tokens and logits.</summary>
    public static string Stories260K(string modelPath)
    {
        using var weights = ModelLoader.Load(modelPath);
        var report = new List<string>();
        var rnd = new RandomData();
        foreach (int promptLength in new[] { 5, 20 })
        {
            // BOS then random ids: 5 rows run through the matrix-vector kernels, 20 through cuBLAS.
            var prompt = new[] { 1 }.Concat(Enumerable.Range(0, promptLength - 1).Select(_ => 3 + rnd.Next(weights.Config.VocabSize - 3))).ToArray();
            // 2e-3: the GPU and the CPU compute K and V to ~1e-7 of each other, but a value that close to a float16
            // rounding boundary lands on the neighbouring float16; one such element moves this tiny model's
            // (head dimension 8) logits by up to ~1e-3. A wrong kernel moves them by 1e-1 or more.
            report.Add(AgainstCpu(weights, DeviceWeightType.F32, prompt, steps: 40, logitTolerance: 2e-3, requireSameTokens: true) + $" (seed {rnd.Seed})");
        }
        var bfPrompt = new[] { 1, 403, 261, 378, 285, 300, 266, 394, 299, 263, 410 };
        report.Add(AgainstCpu(weights, DeviceWeightType.BF16, bfPrompt, steps: 40, logitTolerance: 2e-2, requireSameTokens: false));
        return string.Join("; ", report);
    }

    /// <summary>
    /// stories260K sampled on the device (<see cref="CudaTransformer.ForwardSample"/>, default sampler: temperature 0.8,
    /// top-k 40, top-p 0.95, repetition penalty 1.1) along the CPU engine's own sampled tokens: each step's device choice
    /// equals the CPU sampler's from the CPU logits with the same seed, but for rare flips where the two engines' logits
    /// (within ~1e-3 of each other) straddle a cut.
    /// </summary>
    public static string Stories260KSampled(string modelPath)
    {
        using var weights = ModelLoader.Load(modelPath);
        var config = weights.Config;
        const int steps = 48;
        var options = new SamplerOptions { RepetitionPenalty = 1.1f, Seed = 20261126 };
        var history = new List<int> { 1, 403, 261, 378, 285, 300 };
        int promptLength = history.Count;

        var cpu = new Transformer(weights);
        using var cpuCache = new PagedKvCache(config, new PagedKvCacheOptions { MaxTokens = promptLength + steps + 1, BlockTokens = 1 });
        var cpuSampler = new Sampler(options);
        using var gpu = new CudaTransformer(CudaDevice.Shared, weights, DeviceWeightType.F32);
        using var cache = gpu.CreateCache(promptLength + steps + 1);
        using var gpuSampler = new CudaSampler(CudaDevice.Shared, config.VocabSize, options);
        int same = SameDraws(cpu, cpuCache, cpuSampler, gpu, cache, gpuSampler, history, steps);
        if (same < steps - 2) throw new CheckFailedException($"device sampling chose the CPU sampler's token in {same} of {steps} steps");
        if (history.Skip(promptLength).Distinct().Count() < 5) throw new CheckFailedException("the sampled tokens hardly vary: the draw looks greedy");
        return $"stories260K: the device sampler chose the CPU sampler's token in {same} of {steps} steps ({history.Skip(promptLength).Distinct().Count()} distinct tokens)";
    }

    /// <summary>
    /// Sampled decode through the captured graph (<see cref="CudaTransformer.ForwardSample"/> with one token) over the dense
    /// float16 cache and over paged F32 and F16 caches of the small Llama model (float32 weights), against the CPU engine
    /// and CPU sampler with the same seed: the default sampler with a repetition penalty (the sampler's kernels inside the
    /// graph) and plain greedy (the greedy output head). Half-way a 3-token chunk is prefilled on both engines (the graph's
    /// device-side position and token must follow), and the CPU's token is fed to both every step (a differing GPU token
    /// makes the next step upload the token). Up to 2 of 40 draws may differ (a running sum within rounding of a boundary).
    /// </summary>
    public static string SampledGraphMatchesCpu()
    {
        var rnd = new RandomData();
        using var model = new SmallLlama(rnd);
        const int steps = 40, promptLength = 12;
        var prompt = model.Tokens(promptLength);
        var chunk = model.Tokens(3);
        var report = new List<string>();
        foreach (var (name, options) in new[]
        {
            ("defaults + penalty 1.1", new SamplerOptions { RepetitionPenalty = 1.1f, Seed = (ulong)rnd.Seed }),
            ("greedy", new SamplerOptions { Temperature = 0f, Seed = (ulong)rnd.Seed }),
        })
            foreach (var format in new KvFormat?[] { null, KvFormat.F32, KvFormat.F16 })
            {
                int capacity = promptLength + steps + chunk.Length + 1;
                var cpuOptions = new PagedKvCacheOptions { MaxTokens = capacity, KeyFormat = format ?? KvFormat.F16, ValueFormat = format ?? KvFormat.F16 };
                using var cpuCache = new PagedKvCache(model.Config, cpuOptions);
                using DeviceKvCache cache = format == null ? model.Gpu.CreateCache(capacity)
                    : model.Gpu.CreatePagedCache(new PagedKvCacheOptions { KeyFormat = format.Value, ValueFormat = format.Value, MaxTokens = capacity }, capacity);
                var cpuSampler = new Sampler(options);
                using var gpuSampler = new CudaSampler(CudaDevice.Shared, model.Config.VocabSize, options);
                var history = new List<int>(prompt);
                int same = SameDraws(model.Cpu, cpuCache, cpuSampler, model.Gpu, cache, gpuSampler, history, steps, chunk);
                string what = $"{name}, {(format == null ? "dense f16" : $"paged {format}")}";
                if (same < steps - 2) throw new CheckFailedException($"{what}: the graph-sampled token was the CPU's in {same} of {steps} steps");
                if (cache.Length != cpuCache.Length) throw new CheckFailedException($"{what}: {cache.Length} tokens cached on the GPU, {cpuCache.Length} on the CPU");
                if (options.Temperature > 0f && history.Skip(promptLength).Distinct().Count() < 5)
                    throw new CheckFailedException($"{what}: the sampled tokens hardly vary: the draw looks greedy");
                report.Add($"{what} {same}/{steps}");
            }
        return $"graph-sampled decode = CPU engine + sampler: {string.Join("; ", report)} (seed {rnd.Seed})";
    }

    /// <summary>
    /// Samples <paramref name="steps"/> tokens on both engines after <paramref name="history"/> (the prompt, run first): each
    /// step both run the same tokens and draw with their samplers over the same history, and the CPU's token is fed to both
    /// (and appended to the history). With <paramref name="halfway"/>, those tokens join the step at steps / 2 (a prefill
    /// chunk in mid-generation). Returns how many draws were equal.
    /// </summary>
    private static int SameDraws(Transformer cpu, IKvCache cpuCache, Sampler cpuSampler, CudaTransformer gpu, DeviceKvCache cache, CudaSampler gpuSampler,
        List<int> history, int steps, int[]? halfway = null)
    {
        int[] next = [.. history];
        int same = 0;
        for (int i = 0; i < steps; i++)
        {
            if (i == steps / 2 && halfway != null)
            {
                next = [.. next, .. halfway];
                history.AddRange(halfway);
            }
            var recent = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(history);
            int cpuToken = cpuSampler.Sample(cpu.Forward(next, cpuCache), recent);
            int gpuToken = gpu.ForwardSample(next, cache, gpuSampler, recent);
            if (gpuToken == cpuToken) same++;
            history.Add(cpuToken);
            next = [cpuToken];
        }
        return same;
    }

    /// <summary>
    /// A Qwen2/Qwen3-shaped dummy model (QKV bias, q/k RMSNorm, half-split RoPE with Llama-3 scaling,
    /// 7 query heads per KV head, untied output) in float32: GPU logits match the CPU's.
    /// </summary>
    public static string QwenShapedDummy()
    {
        var config = QwenShaped();
        var rnd = new RandomData();
        using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
        var prompt = Enumerable.Range(0, 30).Select(_ => rnd.Next(config.VocabSize)).ToArray();
        return AgainstCpu(weights, DeviceWeightType.F32, prompt, steps: 6, logitTolerance: 1e-4, requireSameTokens: false) + $" (seed {rnd.Seed})";
    }

    private static ModelConfig QwenShaped() => new()
    {
        Architecture = "qwen3",
        VocabSize = 1000,
        HiddenSize = 256,
        IntermediateSize = 344,
        NumLayers = 2,
        NumHeads = 14,
        NumKvHeads = 2,
        HeadDim = 32,
        RopeTheta = 1e6,
        RopeStyle = RopeStyle.HalfSplit,
        RopeScaling = new Llama3RopeScaling(8, 1, 4, 64),
        AttentionBias = true,
        QkNorm = true,
    };

    /// <summary>
    /// A Llama-shaped dummy model (head dimension 64, 4 query heads per KV head, Llama-3 RoPE scaling) in float32: the
    /// streaming decode attention, the tensor-core prefill attention (a 40-token prompt) and the norms fused into the
    /// matrix-vector products against the CPU; then in bfloat16 with a short prompt through the tensor-core
    /// matrix-vector kernels.
    /// </summary>
    public static string LlamaShapedDummy()
    {
        var rnd = new RandomData();
        using var weights = DummyWeights.Create(LlamaShaped(), GgmlType.F32, rnd.Seed);
        var prompt = Enumerable.Range(0, 40).Select(_ => rnd.Next(weights.Config.VocabSize)).ToArray();
        // 5e-3: the prefill attention rounds queries and probabilities to float16 (~1e-3 of the logits).
        string f32 = AgainstCpu(weights, DeviceWeightType.F32, prompt, steps: 8, logitTolerance: 5e-3, requireSameTokens: false);
        // BF16 weights and a 5-token prompt: 5 rows through the tensor-core matrix-vector kernels (bfloat16 activations).
        string bf16 = AgainstCpu(weights, DeviceWeightType.BF16, prompt[..5], steps: 4, logitTolerance: 3e-2, requireSameTokens: false);
        return $"{f32}; {bf16} (seed {rnd.Seed})";
    }

    /// <summary>
    /// Batch decode: four sequences with different prompt lengths, decoded together (each its own cache and position),
    /// give every sequence the greedy tokens it gets decoded alone; for the streaming (head dimension 64) and the
    /// general (Qwen-shaped, 32) attention kernels.
    /// </summary>
    public static string BatchDecode()
    {
        var report = new List<string>();
        foreach (var config in new[] { LlamaShaped(), QwenShaped() })
        {
            var rnd = new RandomData();
            using var weights = DummyWeights.Create(config, GgmlType.F32, rnd.Seed);
            var prompts = new[] { 5, 12, 3, 20 }.Select(n => Enumerable.Range(0, n).Select(_ => rnd.Next(config.VocabSize)).ToArray()).ToArray();
            const int steps = 10, capacity = 40;
            using var gpu = new CudaTransformer(CudaDevice.Shared, weights, DeviceWeightType.F32);
            var alone = prompts.Select(p =>
            {
                using var cache = gpu.CreateCache(capacity);
                return gpu.GenerateGreedy(p, steps, cache).ToArray();
            }).ToArray();
            using var batchCache = gpu.CreateCache(capacity, prompts.Length);
            var together = gpu.GenerateGreedyBatch(prompts, steps, batchCache);
            for (int i = 0; i < prompts.Length; i++)
                if (!alone[i].SequenceEqual(together[i]))
                    throw new CheckFailedException($"{config.Architecture} hd{config.HeadDim}: sequence {i} decoded in a batch gave [{string.Join(",", together[i])}], alone [{string.Join(",", alone[i])}] (seed {rnd.Seed})");
            report.Add($"{config.Architecture} hd{config.HeadDim}: {prompts.Length} sequences x {steps} tokens equal alone and batched (seed {rnd.Seed})");
        }
        return string.Join("; ", report);
    }

    private static ModelConfig LlamaShaped() => new()
    {
        Architecture = "llama",
        VocabSize = 1000,
        HiddenSize = 512,
        IntermediateSize = 768,
        NumLayers = 2,
        NumHeads = 8,
        NumKvHeads = 2,
        HeadDim = 64,
        RopeTheta = 500000,
        RopeStyle = RopeStyle.HalfSplit,
        RopeScaling = new Llama3RopeScaling(8, 1, 4, 64),
    };

    private static string AgainstCpu(ModelWeights weights, DeviceWeightType type, int[] prompt, int steps, double logitTolerance, bool requireSameTokens)
    {
        var config = weights.Config;
        int vocab = config.VocabSize, capacity = prompt.Length + steps + 1;

        // CPU: all prompt logits, then greedy decoding one token at a time.
        var cpu = new Transformer(weights);
        using var cpuCache = new PagedKvCache(config, new PagedKvCacheOptions { MaxTokens = capacity, BlockTokens = 1 });
        var cpuLogits = cpu.Forward(prompt, cpuCache, LogitsMode.All);
        var cpuTokens = new List<int> { ArgMax(cpuLogits.AsSpan((prompt.Length - 1) * vocab, vocab)) };
        var cpuStepLogits = new List<float[]>();
        for (int i = 1; i < steps; i++)
        {
            var l = cpu.Forward([cpuTokens[^1]], cpuCache);
            cpuStepLogits.Add(l);
            cpuTokens.Add(ArgMax(l));
        }

        using var gpu = new CudaTransformer(CudaDevice.Shared, weights, type);
        // Prompt logits (every row), then the same greedy steps through Forward one token at a time.
        using (var cache = gpu.CreateCache(capacity))
        {
            var gpuLogits = gpu.Forward(prompt, cache, LogitsMode.All);
            string promptReport = Compare.Relative($"{type} prompt logits ({prompt.Length} rows)", gpuLogits, cpuLogits.Select(v => (double)v).ToArray(), logitTolerance);
            var stepErrors = new List<double>();
            // The CPU's tokens one at a time: each step's logits, whatever the greedy picks.
            for (int i = 1; i < steps; i++)
            {
                var l = gpu.Forward([cpuTokens[i - 1]], cache);
                Compare.Relative($"{type} step {i} logits", l, cpuStepLogits[i - 1].Select(v => (double)v).ToArray(), logitTolerance);
            }

            // Greedy generation through the captured decode graph.
            using var genCache = gpu.CreateCache(capacity);
            var gpuTokens = gpu.GenerateGreedy(prompt, steps, genCache);
            int agree = 0;
            while (agree < steps && agree < gpuTokens.Count && gpuTokens[agree] == cpuTokens[agree]) agree++;
            if (requireSameTokens && agree != steps)
                throw new CheckFailedException($"{type}: greedy tokens differ from the CPU's at step {agree}: GPU [{string.Join(",", gpuTokens)}] CPU [{string.Join(",", cpuTokens)}]");
            // Again with the attention asking L2 for the output projection: a hint, so the very same tokens.
            gpu.PrefetchNextWeights = true;
            using var prefetchCache = gpu.CreateCache(capacity);
            var prefetched = gpu.GenerateGreedy(prompt, steps, prefetchCache);
            gpu.PrefetchNextWeights = false;
            if (!prefetched.SequenceEqual(gpuTokens))
                throw new CheckFailedException($"{type}: greedy tokens with the L2 prefetch [{string.Join(",", prefetched)}] differ from those without [{string.Join(",", gpuTokens)}]");
            return $"{promptReport}; greedy {agree}/{steps} tokens equal the CPU's (the same with the L2 prefetch)";
        }
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }
}
