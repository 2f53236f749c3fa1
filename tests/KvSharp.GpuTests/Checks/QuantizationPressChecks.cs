using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Quantization;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Scorers;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// The quantization presses, press sequences and KVCrush <c>kvsharp ask --device cuda</c> runs (<see cref="CudaQuantizationPress"/>,
/// <see cref="CudaSequencePress"/>, <see cref="CudaKvCrushPress"/>) against the CPU presses on the needle model (float32 weights, an F32 cache, as
/// <see cref="ContextPressChecks"/>): the CPU press compresses a fork of the CPU prefill, the device press its own prefill,
/// and the device cache read back (<see cref="CudaPagedKvCache.Download"/>, whose positions follow the device's
/// re-quantizations) must store, per head, the same positions each in the same (key, value) format pair as the CPU
/// cache. Where the press ranks tokens, a token the engines put in different tiers (or keep on one only) must be a
/// near-tie of the CPU ranking scores (<see cref="KvzipChecks.NearTies"/> on the kept tokens and on the top tier's); the
/// greedy answers to the question after the press must be equal when no token differs.
/// </summary>
public static class QuantizationPressChecks
{
    private const int AnswerTokens = 12;

    /// <summary>
    /// The presses checked, each with the format pairs of its top tiers (near-ties measured on them); "{kvtuner}" is a
    /// configuration file written for the model. A sequence's later press ranks without ties (StreamingLLM's positions):
    /// near-ties are measured on the first press's scores only (key-norm there differed in 24 tokens on an H200).
    /// </summary>
    private static (string Press, string[] TopTiers)[] Cases =>
    [
        ("kivi:bits=2,residual=32", []),
        ("kivi:bits=4,residual=16", []),
        ("kvtuner:file={kvtuner}", []),
        ("mikv(snapkv):top=0.3", ["int8"]),
        ("mikv(keynorm):top=0.3,high=int8,low=int4", ["int8"]),
        ("zipvl:tau=0.9", ["int8"]),
        ("leankv(h2o):high=0.8,low=0.95", ["int8:int4"]),
        ("snapkv:keep=0.5 + kivi:bits=2,residual=32", []),
        ("h2o:keep=0.6 + mikv(streamingllm):top=0.3", []),
        ("kivi:bits=4,residual=32 + streamingllm:keep=0.5", []),
        ("kvcrush(snapkv):keep=0.3,reps=0.1", []),
        ("vidkv:outliers=0.5,salient=2,residual=16", []),
    ];

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
        // Room for the partial blocks re-quantization leaves (one per format pair and head): the device's descriptor tables
        // are sized by the capacity, the CPU store has no such limit.
        int capacity = tokens.Length + q.Length + AnswerTokens + 4 * 32;
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = capacity };
        int protect = model.Tokenizer.BosId is { } bos && tokens[0] == bos ? 1 : 0; // as ask: a leading BOS is never evicted
        using var cpuCache = new PagedKvCache(model.Config, options);
        model.Transformer.Forward(tokens, cpuCache);
        string kvtuner = Path.Combine(Path.GetTempPath(), $"kvsharp-kvtuner-{Environment.ProcessId}.json");
        string[] pairs = ["KV8", "K4V2", "KV4", "K8V4"];
        File.WriteAllText(kvtuner, "{\"layers\": [" + string.Join(", ", Enumerable.Range(0, model.Config.NumLayers).Select(l => $"\"{pairs[l % pairs.Length]}\"")) + "]}");
        try
        {
            var report = new List<string>();
            foreach (var (text, top) in Cases)
            {
                var cpuPress = PressRegistry.Parse(text.Replace("{kvtuner}", kvtuner, StringComparison.Ordinal));
                string what = $"{cpuPress.Text}, {tokens.Length} tokens, protect {protect} (seed {rnd.Seed})";
                PressContext NewContext(PagedKvCache cache) => new(model.Transformer, cache, tokens) { Tokenizer = model.Tokenizer, ChatTemplate = template, ProtectedPrefix = protect };
                var ranking = RankingScorer(cpuPress);
                var cpuScores = ranking?.Score(NewContext(cpuCache));
                using var cpuPressed = cpuCache.Fork();
                cpuPress.Compress(NewContext(cpuPressed));

                var press = CudaContextPresses.From(cpuPress);
                using var cache = gpu.CreatePagedCache(options, capacity);
                press.Prefill(gpu, cache, tokens);
                var keep = press.Compress(gpu, cache, tokens, model.Tokenizer, template, protect, out var gpuScores);
                using var gpuPressed = cache.Download();

                double maxError = cpuScores != null && gpuScores[0].Length == tokens.Length ? MaxDifference(what, cpuScores, gpuScores) : 0;
                int heads = model.Config.NumLayers * model.Config.NumKvHeads, ties = 0, formatDiffs = 0;
                var cpuKept = new bool[heads][];
                var gpuKept = new bool[heads][];
                var cpuTop = top.Select(_ => new bool[heads][]).ToArray();
                var gpuTop = top.Select(_ => new bool[heads][]).ToArray();
                var counts = new SortedDictionary<string, int>();
                for (int h = 0; h < heads; h++)
                {
                    int l = h / model.Config.NumKvHeads, g = h % model.Config.NumKvHeads;
                    var cpuFormats = Formats(cpuPressed, l, g);
                    var gpuFormats = Formats(gpuPressed, l, g);
                    cpuKept[h] = [.. Enumerable.Range(0, tokens.Length).Select(cpuFormats.ContainsKey)];
                    gpuKept[h] = [.. Enumerable.Range(0, tokens.Length).Select(gpuFormats.ContainsKey)];
                    if (!keep[h].SequenceEqual(gpuKept[h]))
                        throw new CheckFailedException($"{what}: head {h}: the device press says it keeps {keep[h].Count(k => k)} tokens, the cache read back stores {gpuKept[h].Count(k => k)} others");
                    for (int t = 0; t < top.Length; t++)
                    {
                        var pair = FormatPair.Parse(top[t]);
                        cpuTop[t][h] = [.. Enumerable.Range(0, tokens.Length).Select(p => cpuFormats.TryGetValue(p, out var f) && f == pair)];
                        gpuTop[t][h] = [.. Enumerable.Range(0, tokens.Length).Select(p => gpuFormats.TryGetValue(p, out var f) && f == pair)];
                    }
                    foreach (var (p, f) in gpuFormats)
                    {
                        counts[f.ToString()] = counts.GetValueOrDefault(f.ToString()) + 1;
                        if (cpuFormats.TryGetValue(p, out var c) && c != f) formatDiffs++;
                    }
                }
                foreach (var (cpuMask, gpuMask) in new[] { (cpuKept, gpuKept) }.Concat(cpuTop.Zip(gpuTop)))
                {
                    if (cpuMask.Zip(gpuMask).All(m => m.First.SequenceEqual(m.Second))) continue;
                    if (cpuScores == null)
                        throw new CheckFailedException($"{what}: the device stores other tokens or formats than the CPU press, which ranks nothing ({Differences(cpuMask, gpuMask)})");
                    ties += KvzipChecks.NearTies(what, cpuScores, cpuMask, gpuMask, protect, [1], maxError);
                }
                if (formatDiffs > 0 && ties == 0)
                    throw new CheckFailedException($"{what}: {formatDiffs} tokens stored by both engines in different formats, with no near-tie in the ranking");

                var cpuAnswer = KvzipChecks.CpuAnswer(model, q, cpuPressed, AnswerTokens);
                List<int> gpuAnswer;
                try
                {
                    gpuAnswer = [.. gpu.GenerateGreedy(q, AnswerTokens, cache)];
                }
                catch (KvSharpException e)
                {
                    throw new CheckFailedException($"{what}: the answer after the press: {e.Message}");
                }
                bool same = cpuAnswer.SequenceEqual(gpuAnswer);
                // The same tokens in the same formats are not the same bytes: the device's prefill rounds activations to
                // bfloat16 (the needle model's weights), so its keys and values differ from the CPU's by rounding, and a
                // 2-4-bit code may flip, or the device may group a head's tokens into other blocks (docs/cuda.md). An answer
                // that differs must then be the CPU model's own answer over the device's cache read back: the difference is
                // in what the cache holds, not in the device's press or decode.
                string through = "";
                if (!same && ties == 0)
                {
                    var overDevice = KvzipChecks.CpuAnswer(model, q, gpuPressed, AnswerTokens);
                    if (!overDevice.SequenceEqual(gpuAnswer))
                        throw new CheckFailedException($"{what}: the same tokens in the same formats, but the answers differ: CPU '{model.Tokenizer.Decode(cpuAnswer)}', " +
                            $"GPU '{model.Tokenizer.Decode(gpuAnswer)}', the CPU over the device's cache '{model.Tokenizer.Decode(overDevice)}'");
                    through = " (the CPU over the device's cache gives the device's answer: the caches' bytes differ)";
                }
                report.Add($"{cpuPress.Text}: {string.Join(", ", counts.Select(c => $"{c.Value} {c.Key}"))}; {ties} near-ties, {formatDiffs} format differences; " +
                    $"answer '{model.Tokenizer.Decode(gpuAnswer).Trim()}' " + (same ? "= CPU" : $"vs CPU '{model.Tokenizer.Decode(cpuAnswer).Trim()}'{through}"));
            }
            return $"{tokens.Length} tokens (seed {rnd.Seed}): " + string.Join("; ", report);
        }
        finally
        {
            File.Delete(kvtuner);
        }
    }

    /// <summary>The scorer that ranks a press's tokens over the fresh prefill (a quantization press's, a sequence's first press's), or null.</summary>
    private static IScorer? RankingScorer(IKvPress press) => press switch
    {
        ScoredPress scored => scored.Scorer,
        KvCrushPress crush => crush.Inner.Scorer,
        MiKvPress mikv => mikv.Scorer,
        ZipVlPress zipVl => zipVl.Scorer,
        LeanKvPress leanKv => leanKv.Scorer,
        SequentialPress sequence => RankingScorer(sequence.Presses[0]),
        _ => null,
    };

    /// <summary>Fails unless both engines force (+∞) the same tokens; the largest absolute difference of the finite scores.</summary>
    private static double MaxDifference(string what, HeadScores cpu, HeadScores gpu)
    {
        double max = 0;
        for (int h = 0; h < cpu.HeadCount; h++)
            for (int i = 0; i < cpu[h].Length; i++)
            {
                if (float.IsPositiveInfinity(cpu[h][i]) != float.IsPositiveInfinity(gpu[h][i]))
                    throw new CheckFailedException($"{what}: head {h} token {i}: CPU score {cpu[h][i]:E3}, GPU {gpu[h][i]:E3} (one forced, the other not)");
                if (float.IsFinite(cpu[h][i])) max = Math.Max(max, Math.Abs(cpu[h][i] - gpu[h][i]));
            }
        return max;
    }

    /// <summary>The format pair of every position (layer, KV head) stores: its block's, or F32 in the float tail.</summary>
    private static Dictionary<int, FormatPair> Formats(PagedKvCache cache, int layer, int kvHead)
    {
        var map = new Dictionary<int, FormatPair>();
        foreach (var e in cache.Blocks(layer, kvHead))
            foreach (int p in e.Positions) map[p] = new FormatPair(e.KeyLayout.Format, e.ValueLayout.Format);
        foreach (int p in cache.ReadStore(layer, kvHead).TailPositions) map[p] = new FormatPair(KvFormat.F32, KvFormat.F32);
        return map;
    }

    /// <summary>The first differing head and tokens of two masks, for a failure's message.</summary>
    private static string Differences(bool[][] cpu, bool[][] gpu)
    {
        int h = Enumerable.Range(0, cpu.Length).First(i => !cpu[i].SequenceEqual(gpu[i]));
        var tokens = Enumerable.Range(0, cpu[h].Length).Where(i => cpu[h][i] != gpu[h][i]).Take(8);
        return $"head {h}, tokens {string.Join(", ", tokens.Select(i => $"{i} ({(cpu[h][i] ? "CPU" : "GPU")})"))}";
    }
}
