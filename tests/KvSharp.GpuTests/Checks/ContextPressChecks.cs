using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Actions;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Registry;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// The presses <c>kvsharp ask --device cuda</c> runs (<see cref="CudaContextPresses.From"/>) against the CPU presses on
/// the needle model (its bfloat16 weights widened to float32 on the GPU, an F32 cache: the engines differ by rounding
/// only): one needle prompt prefilled on the CPU and pressed by each CPU press (<c>ScoredPress.Select</c>, the CPU's
/// re-runs of SnapKV's window and H2O's chunks), and for each press a device prefill observing what the press needs and
/// the device press. Per press: the +∞ (forced) tokens the same, the finite scores within 1e-3 relative, the kept tokens
/// the same but for near-ties (a CPU score within twice the largest score difference of a CPU keep threshold: per head,
/// per layer for AdaKV, over every head for a global budget; counted), and the greedy answers to the question after the
/// press equal when the kept tokens are.
/// </summary>
public static class ContextPressChecks
{
    private const int AnswerTokens = 12;

    /// <summary>
    /// The presses checked: SnapKV under uniform, pyramid, AdaKV and dynamic (DBudgetKV) budgets, TOVA, H2O under uniform and
    /// global budgets, key-norm, StreamingLLM, random, R-KV (the window's statistics on the device, the keys' redundancy on
    /// the host), the ZipVL scorer (H2O's sums per observing query) and KV-Compress (the window's tokens one at a time,
    /// global budget); with each the head groupings a near-tie is measured against.
    /// </summary>
    private static (string Press, Func<int, int, int[]> Groups)[] Cases =>
    [
        ("snapkv:keep=0.3", PerHead),
        ("snapkv+pyramid:keep=0.3,window=16", PerHead),
        ("adakv(snapkv):keep=0.3", (kvHeads, _) => [1, kvHeads]),
        ("dbudgetkv:mass=0.05", PerHead),
        ("tova:keep=0.4", PerHead),
        ("h2o:keep=0.3", PerHead),
        ("h2o+global:keep=0.3,chunk=100,window=16", (_, heads) => [heads]),
        ("keynorm:keep=0.5", PerHead),
        ("streamingllm:keep=0.3", PerHead),
        ("random:keep=0.5,seed=3", PerHead),
        ("rkv:keep=0.5", PerHead),
        ("uniform(zipvl):keep=0.5,chunk=32", PerHead),
        ("kvcompress:keep=0.5,window=8,block=16", (_, heads) => [heads]),
    ];

    private static int[] PerHead(int kvHeads, int heads) => [1];

    /// <summary>Runs every case on one needle prompt; returns one line per press.</summary>
    public static string MatchesCpu(string needleModel)
    {
        var rnd = new RandomData();
        using var model = LanguageModel.Load(needleModel);
        using var gpu = new CudaTransformer(CudaDevice.Shared, model.Weights, DeviceWeightType.F32);
        var template = model.ChatTemplateText != null ? model.ChatTemplate : null;
        var (context, question) = KvzipChecks.NeedlePrompt(rnd, 110 + rnd.Next(40));
        var tokens = model.Encode(context);
        var q = model.Encode(question, addBos: false);
        int capacity = tokens.Length + q.Length + AnswerTokens;
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = capacity };
        int protect = model.Tokenizer.BosId is { } bos && tokens[0] == bos ? 1 : 0; // as ask: a leading BOS is never evicted
        using var cpuCache = new PagedKvCache(model.Config, options);
        model.Transformer.Forward(tokens, cpuCache);

        var report = new List<string>();
        foreach (var (text, groups) in Cases)
        {
            var cpuPress = (ScoredPress)PressRegistry.Parse(text);
            string what = $"{cpuPress.Text}, {tokens.Length} tokens, protect {protect} (seed {rnd.Seed})";
            var pressContext = new PressContext(model.Transformer, cpuCache, tokens) { Tokenizer = model.Tokenizer, ChatTemplate = template, ProtectedPrefix = protect };
            var masks = cpuPress.Select(pressContext, out var cpuScores);

            var press = CudaContextPresses.From(cpuPress);
            using var cache = gpu.CreatePagedCache(options, capacity);
            press.Prefill(gpu, cache, tokens);
            var keep = press.Compress(gpu, cache, tokens, model.Tokenizer, template, protect, out var gpuScores);

            double maxError = ScoreDifference(what, cpuScores, gpuScores, tokens.Length, out string scores);
            int ties = KvzipChecks.NearTies(what, cpuScores, masks, keep, protect, groups(model.Config.NumKvHeads, cpuScores.HeadCount), maxError);
            var lengths = cache.HeadLengths();
            for (int h = 0; h < keep.Length; h++)
                if (lengths[h] != keep[h].Count(k => k))
                    throw new CheckFailedException($"{what}: head {h} stores {lengths[h]} tokens after the device eviction, the press kept {keep[h].Count(k => k)}");

            using var evicted = cpuCache.Fork();
            var evictContext = new PressContext(model.Transformer, evicted, tokens) { ProtectedPrefix = protect };
            for (int h = 0; h < masks.Length; h++) EvictAction.Instance.Apply(evictContext, h / model.Config.NumKvHeads, h % model.Config.NumKvHeads, masks[h]);
            var cpuAnswer = KvzipChecks.CpuAnswer(model, q, evicted, AnswerTokens);
            var gpuAnswer = gpu.GenerateGreedy(q, AnswerTokens, cache);
            bool same = cpuAnswer.SequenceEqual(gpuAnswer);
            if (!same && ties == 0)
                throw new CheckFailedException($"{what}: the same kept tokens, but the answers differ: CPU '{model.Tokenizer.Decode(cpuAnswer)}', GPU '{model.Tokenizer.Decode(gpuAnswer)}'");
            long kept = keep.Sum(k => (long)k.Count(x => x));
            report.Add($"{cpuPress.Text}: {scores}; kept {kept} of {(long)keep.Length * tokens.Length}, {ties} near-ties differ; answer '{model.Tokenizer.Decode(gpuAnswer).Trim()}' " +
                (same ? "= CPU" : $"vs CPU '{model.Tokenizer.Decode(cpuAnswer).Trim()}'"));
        }
        return $"{tokens.Length} tokens (seed {rnd.Seed}): " + string.Join("; ", report);
    }

    /// <summary>
    /// Fails unless both engines force (+∞) the same tokens and the finite scores agree within 1e-3 relative; returns the
    /// largest absolute difference and a summary.
    /// </summary>
    private static double ScoreDifference(string what, HeadScores cpu, HeadScores gpu, int length, out string summary)
    {
        var got = new List<float>();
        var expected = new List<double>();
        double maxError = 0;
        int forced = 0;
        for (int h = 0; h < cpu.HeadCount; h++)
        {
            if (gpu[h].Length != length || cpu[h].Length != length)
                throw new CheckFailedException($"{what}: head {h} has {gpu[h].Length} GPU and {cpu[h].Length} CPU scores for {length} tokens");
            for (int i = 0; i < length; i++)
            {
                bool cpuForced = float.IsPositiveInfinity(cpu[h][i]);
                if (cpuForced != float.IsPositiveInfinity(gpu[h][i]))
                    throw new CheckFailedException($"{what}: head {h} token {i}: CPU score {cpu[h][i]:E3}, GPU {gpu[h][i]:E3} (one forced, the other not)");
                if (cpuForced)
                {
                    forced++;
                    continue;
                }
                got.Add(gpu[h][i]);
                expected.Add(cpu[h][i]);
                maxError = Math.Max(maxError, Math.Abs(gpu[h][i] - cpu[h][i]));
            }
        }
        summary = Compare.Relative("scores", got.ToArray(), expected.ToArray(), 1e-3) + $", max abs diff {maxError:E1}, {forced} forced";
        return maxError;
    }
}
