using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Decoding;
using KvSharp.Compression.Registry;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// Decode-time compression on the device (<see cref="CudaDecodePresses"/>: <c>--device cuda --decode-press</c>) against the
/// CPU decode press on the needle model (float32 on both engines), F32 and INT4 caches: one needle prompt prefilled into a
/// CPU and a device cache, then both generate in lock step, each step's token the CPU's greedy choice (so both caches see
/// the same tokens), the device's step through <see cref="CudaTransformer.ForwardSample"/> (the captured graph where the
/// press does not observe, the statistics launches where it does). After every compression: each head's kept positions
/// the same but for near-ties of the CPU session's scores (<see cref="KvzipChecks.NearTies"/>, measured against the
/// largest CPU-GPU difference of the scores both sessions chose by, which must be within a relative tolerance: a wrong
/// statistic cannot pass as a near-tie), the device storing what it kept; each step the device's greedy token the CPU's
/// unless the CPU's logits tie within the same tolerance. A near-tie that kept different tokens ends the comparison of
/// that run (the caches then hold different tokens), counted in the report.
/// </summary>
public static class DecodePressChecks
{
    private const int Steps = 96;

    /// <summary>The presses (small budgets, so a run compresses many times) and the caches: F32 blocks and INT4 (g32) blocks.</summary>
    private static readonly string[] Presses = ["h2o:tokens=48,window=8", "h2o:tokens=40,every=8,window=4", "rkv:tokens=48,every=16,window=8"];

    /// <remarks>
    /// INT4's tolerance is wider: the two engines' evictions may regroup kept tokens into blocks differently (the device per
    /// run of affected blocks, the CPU into one partial block per format), so later re-quantized keys may differ by a
    /// quantization step; a misplaced statistic or position still differs by far more (order 1).
    /// </remarks>
    private static readonly (KvFormat Format, double Tolerance)[] Caches = [(KvFormat.F32, 1e-3), (KvFormat.Int4, 5e-2)];

    /// <summary>Runs every press over every cache on one needle prompt; returns one line per run.</summary>
    public static string MatchesCpu(string needleModel)
    {
        var rnd = new RandomData();
        using var model = LanguageModel.Load(needleModel);
        using var gpu = new CudaTransformer(CudaDevice.Shared, model.Weights, DeviceWeightType.F32);
        var (context, _) = KvzipChecks.NeedlePrompt(rnd, 8 + rnd.Next(4));
        var tokens = model.Encode(context);
        var report = new List<string>();
        foreach (var (format, tolerance) in Caches)
            foreach (var text in Presses)
                report.Add($"{format} {text}: " + Run(model, gpu, tokens, DecodePressRegistry.Parse(text), format, tolerance, $"{format} {text}, {tokens.Length} prompt tokens (seed {rnd.Seed})"));
        return $"{tokens.Length} prompt tokens (seed {rnd.Seed}): " + string.Join("; ", report);
    }

    /// <summary>
    /// The cases the check above does not reach, against the same CPU session: H2O without a window or a protected prefix over
    /// the device's running sums (every token a candidate, the newest scored 0), and H2O over a device cache uploaded from a
    /// CPU cache that re-quantized some of every head's tokens (stored out of position order), where the session keeps its
    /// sums on the host from the statistics read back.
    /// </summary>
    public static string EdgesMatchCpu(string needleModel)
    {
        var rnd = new RandomData();
        using var model = LanguageModel.Load(needleModel);
        using var gpu = new CudaTransformer(CudaDevice.Shared, model.Weights, DeviceWeightType.F32);
        var (context, _) = KvzipChecks.NeedlePrompt(rnd, 8 + rnd.Next(4));
        var tokens = model.Encode(context);
        var bare = DecodePressRegistry.Parse("h2o:tokens=40,every=2,window=0,protect=0");
        var uploaded = DecodePressRegistry.Parse("h2o:tokens=40,every=4,window=6");
        string Name(DecodePress p, string how) => $"F32 {p.Text} {how}, {tokens.Length} prompt tokens (seed {rnd.Seed})";
        return $"{tokens.Length} prompt tokens (seed {rnd.Seed}): {bare.Text} (running sums on the device): " +
            Run(model, gpu, tokens, bare, KvFormat.F32, 1e-3, Name(bare, "on the device's sums")) +
            $"; {uploaded.Text} over an uploaded cache with re-quantized tokens (host sums): " +
            Run(model, gpu, tokens, uploaded, KvFormat.F32, 1e-3, Name(uploaded, "over an uploaded re-quantized cache"), reordered: true);
    }

    /// <param name="reordered">
    /// The CPU cache re-quantizes every third position of each head into INT8 after the prefill (regrouped: its heads are
    /// stored out of position order) and the device cache is its upload; otherwise the device prefills its own cache.
    /// </param>
    private static string Run(LanguageModel model, CudaTransformer gpu, int[] tokens, DecodePress press, KvFormat format, double tolerance, string what,
        bool reordered = false)
    {
        int capacity = tokens.Length + Steps + 1;
        var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = capacity };
        using var cpuCache = new PagedKvCache(model.Config, options);
        using var sampler = new CudaSampler(CudaDevice.Shared, model.Config.VocabSize, SamplerOptions.Greedy);
        var history = new List<int>(tokens);
        var logits = model.Transformer.Forward(tokens, cpuCache);
        int next = KvzipChecks.ArgMax(logits);
        if (reordered) Reorder(cpuCache);
        using var cache = reordered ? CudaPagedKvCache.Upload(CudaDevice.Shared, model.Config, cpuCache, capacity) : gpu.CreatePagedCache(options, capacity);
        int gpuNext = reordered ? next : gpu.ForwardSample(tokens, cache, sampler, history.ToArray());
        int tokenTies = Tie(what, 0, logits, next, gpuNext, tolerance), tokensAfter = 0;
        using var cpuSession = press.Start(cpuCache);
        using var gpuSession = CudaDecodePresses.Start(press, cache);
        // H2O keeps its running sums on the device unless a head is stored out of position order: a fallback would pass unseen.
        if (cache.KeepsRunningSums != (press is H2oDecodePress && !reordered))
            throw new CheckFailedException($"{what}: the device session {(cache.KeepsRunningSums ? "keeps" : "does not keep")} H2O's running sums on the device");
        var cpuPress = (DecodePressSession)cpuSession;
        var gpuPress = (DecodePressSession)gpuSession;
        int compressions = 0, keptTies = 0, divergedAt = 0, graphSteps = 0;
        double worst = 0;
        for (int step = 1; step <= Steps; step++)
        {
            history.Add(next);
            var before = Ascending(cache);
            var cpuBefore = Enumerable.Range(0, before.Length).Select(h => cpuCache.Positions(h / cpuCache.KvHeads, h % cpuCache.KvHeads).ToArray()).ToArray();
            cpuSession.BeforeStep(step);
            gpuSession.BeforeStep(step);
            if (!cache.IsCollectingStatistics) graphSteps++; // ForwardSample replays the captured graph for this step
            logits = model.Transformer.Forward([next], cpuCache);
            gpuNext = gpu.ForwardSample([next], cache, sampler, history.ToArray());
            int compressed = cpuPress.Compressions;
            cpuSession.AfterStep(step);
            gpuSession.AfterStep(step);
            next = KvzipChecks.ArgMax(logits);
            if (divergedAt == 0) tokenTies += Tie(what, step, logits, next, gpuNext, tolerance);
            else if (gpuNext != next) tokensAfter++; // the caches hold different tokens since a near-tie: counted, not judged
            if (cpuPress.Compressions != gpuPress.Compressions && divergedAt == 0)
                throw new CheckFailedException($"{what}: step {step}: the CPU session compressed {cpuPress.Compressions} times, the device's {gpuPress.Compressions}");
            if (cpuPress.Compressions == compressed) continue;
            compressions++;
            if (divergedAt != 0) continue;
            // Both sessions scored the same tokens (the kept sets agreed so far): the heads' positions before this step plus its own.
            var cpuScores = cpuPress.LastScores!;
            var gpuScores = gpuPress.LastScores!;
            double maxError = ScoreDifference($"{what}, compression at step {step}", cpuScores, gpuScores, tolerance);
            worst = Math.Max(worst, maxError);
            var after = Ascending(cache);
            var cpuKeep = new bool[before.Length][];
            var gpuKeep = new bool[before.Length][];
            for (int h = 0; h < before.Length; h++)
            {
                int[] scored = [.. cpuBefore[h], tokens.Length + step - 1];
                var cpuAfter = cpuCache.Positions(h / cpuCache.KvHeads, h % cpuCache.KvHeads).ToHashSet();
                var gpuAfter = after[h].ToHashSet();
                cpuKeep[h] = scored.Select(cpuAfter.Contains).ToArray();
                gpuKeep[h] = scored.Select(gpuAfter.Contains).ToArray();
                if (gpuAfter.Count != gpuKeep[h].Count(k => k) || cpuAfter.Count != cpuKeep[h].Count(k => k))
                    throw new CheckFailedException($"{what}: step {step}: head {h} stores positions it did not hold before the compression");
            }
            int ties = KvzipChecks.NearTies($"{what}, compression at step {step}", cpuScores, cpuKeep, gpuKeep, press.Protect, [1], maxError);
            if (ties > 0)
            {
                keptTies += ties;
                divergedAt = step;
            }
            var lengths = cache.HeadLengths();
            for (int h = 0; h < lengths.Length; h++)
                if (lengths[h] != after[h].Length)
                    throw new CheckFailedException($"{what}: step {step}: head {h} stores {lengths[h]} tokens on the device, its positions say {after[h].Length}");
        }
        if (compressions == 0) throw new CheckFailedException($"{what}: no compression in {Steps} steps: the budget is too large for the check");
        if (press is RkvDecodePress && graphSteps == 0) throw new CheckFailedException($"{what}: every step collected statistics: the graph steps were not exercised");
        return $"{compressions} compressions, kept tokens = CPU{(divergedAt == 0 ? "" : $" up to step {divergedAt} ({keptTies} near-ties differ there)")}, " +
            $"scores max abs diff {worst:E1}, {graphSteps} graph steps of {Steps}, greedy tokens = CPU" + (tokenTies > 0 ? $" but {tokenTies} logit near-ties" : "") +
            (tokensAfter > 0 ? $", {tokensAfter} differ after the kept sets did" : "");
    }

    /// <summary>Re-quantizes each head's positions ≡ 1 (mod 3) into INT8 keys and values: the regrouped heads store them out of position order.</summary>
    private static void Reorder(PagedKvCache cache)
    {
        for (int l = 0; l < cache.Layers; l++)
            for (int h = 0; h < cache.KvHeads; h++)
            {
                var positions = cache.Positions(l, h).ToArray();
                cache.Requantize(l, h, positions.Select(p => p % 3 == 1).ToArray(), KvFormat.Int8, KvFormat.Int8);
            }
    }

    /// <summary>Each head's stored positions on the device, ascending (the CPU cache's order).</summary>
    private static int[][] Ascending(CudaPagedKvCache cache) =>
        [.. Enumerable.Range(0, cache.HeadCount).Select(h => cache.StoredPositions(h).Order().ToArray())];

    /// <summary>0 when the device chose the CPU's token, 1 when it chose another within <paramref name="tolerance"/> (relative) of the CPU's best logit; else fails.</summary>
    private static int Tie(string what, int step, float[] logits, int cpu, int gpu, double tolerance)
    {
        if (cpu == gpu) return 0;
        double gap = logits[cpu] - logits[gpu];
        if (gap > tolerance * Math.Max(1, Math.Abs(logits[cpu])))
            throw new CheckFailedException($"{what}: step {step}: the device chose token {gpu}, the CPU {cpu}, whose logit is {gap:E2} higher");
        return 1;
    }

    /// <summary>
    /// Fails unless both sessions force (+∞) the same tokens and their finite scores agree within <paramref name="tolerance"/>
    /// relative; returns the largest absolute difference.
    /// </summary>
    private static double ScoreDifference(string what, HeadScores cpu, HeadScores gpu, double tolerance)
    {
        var got = new List<float>();
        var expected = new List<double>();
        double maxError = 0;
        for (int h = 0; h < cpu.HeadCount; h++)
        {
            if (gpu[h].Length != cpu[h].Length) throw new CheckFailedException($"{what}: head {h} has {gpu[h].Length} device and {cpu[h].Length} CPU scores");
            for (int i = 0; i < cpu[h].Length; i++)
            {
                if (float.IsPositiveInfinity(cpu[h][i]) != float.IsPositiveInfinity(gpu[h][i]))
                    throw new CheckFailedException($"{what}: head {h} token {i}: CPU score {cpu[h][i]:E3}, device {gpu[h][i]:E3} (one forced, the other not)");
                if (float.IsPositiveInfinity(cpu[h][i])) continue;
                got.Add(gpu[h][i]);
                expected.Add(cpu[h][i]);
                maxError = Math.Max(maxError, Math.Abs(gpu[h][i] - cpu[h][i]));
            }
        }
        Compare.Relative($"{what}: scores", got.ToArray(), expected.ToArray(), tolerance);
        return maxError;
    }
}
