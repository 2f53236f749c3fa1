using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Actions;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Scorers;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// KVzip on the device against the CPU press on our needle model (kvsharp-needle-16m, its bfloat16 weights widened to
/// float32 on the GPU so the two engines differ only by rounding): a needle prompt is prefilled on each engine (a
/// quantized cache: the CPU's prefill uploaded, so both press the same codes), the CPU
/// press <c>ScoredPress(KvzipScorer, budget)</c> and <see cref="CudaKvzipPress"/> score it; the scores must agree, the
/// kept tokens must be the same but for near-ties (tokens whose CPU score lies within twice the largest score
/// difference of the CPU's keep threshold, counted), and the greedy answers to the question after the press must be the
/// same when the kept tokens are.
/// </summary>
public static class KvzipChecks
{
    private const int AnswerTokens = 12;
    private static readonly string[] Filler = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."];

    /// <summary>
    /// Three cases: an F32 cache under KVzip's own global budget (keep 0.3), an INT4 cache under a uniform budget (keep 0.5)
    /// with a protected prefix, and KVzip+ (each probability weighted by ‖W_o^h v_t‖ / ‖x_q‖, the value norms from the
    /// device cache and the device's W_o) on an F32 cache under a uniform budget (keep 0.4); chunks of 200-256 tokens so
    /// each context takes several repeat runs.
    /// </summary>
    public static string MatchesCpu(string needleModel)
    {
        var rnd = new RandomData();
        using var model = LanguageModel.Load(needleModel);
        using var gpu = new CudaTransformer(CudaDevice.Shared, model.Weights, DeviceWeightType.F32);
        var template = model.ChatTemplateText != null ? model.ChatTemplate : null;
        var report = new List<string>();
        foreach (var (format, budget, global, chunk, protect, plus) in new (KvFormat, IBudget, bool, int, int, bool)[]
        {
            (KvFormat.F32, new GlobalBudget(KeepTarget.Ratio(0.3)), true, 256, 0, false),
            (KvFormat.Int4, new UniformBudget(KeepTarget.Ratio(0.5)), false, 200, 4, false),
            (KvFormat.F32, new UniformBudget(KeepTarget.Ratio(0.4)), false, 200, 4, true),
        })
        {
            var (context, question) = NeedlePrompt(rnd, 110 + rnd.Next(40));
            var tokens = model.Encode(context);
            // A quantized context ends on a block boundary. Otherwise its last tokens stay float32 (the residual) until the
            // repeat run's keys fill their block, which each engine then encodes from its own forward pass: a code of a
            // context token flips where a key lies on a rounding boundary, and that token's score moves by a few percent
            // (2.1e-2 of 0.65 on an H100, stop 20). Whole blocks are the uploaded codes on both engines.
            if (format != KvFormat.F32) tokens = tokens[..(tokens.Length / BlockLayout.DefaultTokens * BlockLayout.DefaultTokens)];
            var q = model.Encode(question, addBos: false);
            int capacity = tokens.Length + chunk + 64 + q.Length + AnswerTokens;
            var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = capacity };
            string what = $"{(plus ? "kvzip+" : "kvzip")} {format} {budget.Text} chunk {chunk} protect {protect}, {tokens.Length} tokens (seed {rnd.Seed})";

            using var cpuCache = new PagedKvCache(model.Config, options);
            model.Transformer.Forward(tokens, cpuCache);
            var press = new PressContext(model.Transformer, cpuCache, tokens) { Tokenizer = model.Tokenizer, ChatTemplate = template, ProtectedPrefix = protect };
            var masks = new ScoredPress(new KvzipScorer(chunk, plus), budget).Select(press, out var cpuScores);

            // A float cache is prefilled on the device. A quantized one is the CPU's prefill uploaded: both engines' keys
            // differ in the last bits, and where one lies on a rounding boundary its 4-bit code flips by a whole step (a
            // few % of a head's scores; 2-3% apart on an H100 with the device's own prefill), so the press is compared on
            // the same stored codes.
            using var cache = format == KvFormat.F32 ? gpu.CreatePagedCache(options, capacity) : CudaPagedKvCache.Upload(CudaDevice.Shared, model.Config, cpuCache, capacity);
            if (format == KvFormat.F32) gpu.Forward(tokens, cache);
            var keep = new CudaKvzipPress(new KvzipScorer(chunk, plus), budget).Compress(gpu, cache, tokens, model.Tokenizer, template, protect, out var gpuScores);

            var got = new List<float>();
            var expected = new List<double>();
            double maxError = 0;
            for (int h = 0; h < cpuScores.HeadCount; h++)
                for (int i = 0; i < tokens.Length; i++)
                {
                    got.Add(gpuScores[h][i]);
                    expected.Add(cpuScores[h][i]);
                    maxError = Math.Max(maxError, Math.Abs(gpuScores[h][i] - cpuScores[h][i]));
                }
            // Float caches: rounding only (1.7e-6 on an H100). Quantized: each engine still encodes the repeat run's own keys
            // from its own forward pass, so a code can flip there (9.7e-4, growing with the later runs to 3e-3 absolute on
            // an H100, before the context was cut to whole blocks).
            string scores = Compare.Relative($"{what} scores{Worst(cpuScores, gpuScores, tokens.Length, chunk, protect)}", got.ToArray(), expected.ToArray(),
                format == KvFormat.F32 ? 1e-3 : 1e-2);
            int ties = NearTies(what, cpuScores, masks, keep, protect, [global ? cpuScores.HeadCount : 1], maxError);

            // The question after the press: the CPU cache evicted by its own masks, greedy on both engines.
            for (int h = 0; h < masks.Length; h++) EvictAction.Instance.Apply(press, h / model.Config.NumKvHeads, h % model.Config.NumKvHeads, masks[h]);
            var cpuAnswer = CpuAnswer(model, q, cpuCache, AnswerTokens);
            var gpuAnswer = gpu.GenerateGreedy(q, AnswerTokens, cache);
            bool same = cpuAnswer.SequenceEqual(gpuAnswer);
            if (!same && ties == 0)
                throw new CheckFailedException($"{what}: the same kept tokens, but the answers differ: CPU '{model.Tokenizer.Decode(cpuAnswer)}', GPU '{model.Tokenizer.Decode(gpuAnswer)}'");
            report.Add($"{scores}, max abs diff {maxError:E1}; kept tokens: {ties} near-ties differ; answer '{model.Tokenizer.Decode(gpuAnswer).Trim()}' " +
                (same ? "= CPU" : $"vs CPU '{model.Tokenizer.Decode(cpuAnswer).Trim()}'"));
        }
        return string.Join("; ", report);
    }

    /// <summary>Where the scores differ most (head, token, its repeat run, both scores) and the largest difference per run, for a failure's message.</summary>
    private static string Worst(HeadScores cpu, HeadScores gpu, int length, int chunk, int protect)
    {
        int runs = (length - protect + chunk - 1) / chunk;
        var perRun = new double[runs];
        (double Diff, int Head, int Token) worst = (0, 0, 0);
        for (int h = 0; h < cpu.HeadCount; h++)
            for (int i = protect; i < length; i++)
            {
                double d = Math.Abs(gpu[h][i] - cpu[h][i]);
                int run = (i - protect) / chunk;
                perRun[run] = Math.Max(perRun[run], d);
                if (d > worst.Diff) worst = (d, h, i);
            }
        return $" (largest difference {worst.Diff:E2} at head {worst.Head} token {worst.Token}: CPU {cpu[worst.Head][worst.Token]:E3}, GPU " +
            $"{gpu[worst.Head][worst.Token]:E3}; per run {string.Join("/", perRun.Select(d => d.ToString("E1", System.Globalization.CultureInfo.InvariantCulture)))})";
    }

    /// <summary>
    /// Tokens kept by one engine and not the other; fails unless each is a near-tie: its CPU score within 2 · maxError (+1e-7)
    /// of a CPU keep threshold, the lowest kept candidate score over a group of consecutive heads for each size in
    /// <paramref name="groups"/> (1: per head, as a uniform budget chooses; KV heads: per layer, as AdaKV's top-k across a
    /// layer; every head: a global budget).
    /// </summary>
    internal static int NearTies(string what, HeadScores cpuScores, bool[][] cpuKeep, bool[][] gpuKeep, int protect, IReadOnlyList<int> groups, double maxError)
    {
        float Lowest(int h)
        {
            float lo = float.PositiveInfinity;
            for (int i = protect; i < cpuKeep[h].Length; i++) if (cpuKeep[h][i]) lo = Math.Min(lo, cpuScores[h][i]);
            return lo;
        }
        var lowest = Enumerable.Range(0, cpuKeep.Length).Select(Lowest).ToArray();
        int ties = 0;
        for (int h = 0; h < cpuKeep.Length; h++)
        {
            var thresholds = groups.Select(g => lowest.Skip(h / g * g).Take(g).Min()).ToArray();
            for (int i = 0; i < cpuKeep[h].Length; i++)
            {
                if (cpuKeep[h][i] == gpuKeep[h][i]) continue;
                double s = cpuScores[h][i];
                if (i < protect || thresholds.All(t => Math.Abs(s - t) > 2 * maxError + 1e-7))
                    throw new CheckFailedException($"{what}: head {h} token {i} kept by the {(cpuKeep[h][i] ? "CPU" : "GPU")} only, CPU score {s:E3} vs threshold " +
                        $"{string.Join(" / ", thresholds.Select(t => t.ToString("E3", System.Globalization.CultureInfo.InvariantCulture)))} (scores differ by up to {maxError:E1})");
                ties++;
            }
        }
        return ties;
    }

    /// <summary>A RULER-style needle prompt (the needle model's training format): a noise haystack of about <paramref name="sentences"/> sentences hiding one number.</summary>
    internal static (string Context, string Question) NeedlePrompt(RandomData rnd, int sentences)
    {
        string key = new[] { "apple", "river", "violin", "harbor", "lantern", "meadow" }[rnd.Next(6)];
        int value = 1_000_000 + rnd.Next(9_000_000);
        int at = rnd.Next(sentences);
        var text = new System.Text.StringBuilder("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about the number afterwards.\n");
        for (int i = 0; i < sentences; i++)
        {
            if (i == at) text.Append($"One of the special magic numbers for {key} is: {value}. ");
            text.Append(Filler[i % Filler.Length]).Append(' ');
        }
        text.Append('\n');
        return (text.ToString(), $"What is the special magic number for {key} mentioned in the provided text? The special magic number for {key} mentioned in the provided text is");
    }

    /// <summary>The CPU model's greedy answer of <paramref name="tokens"/> tokens to <paramref name="q"/> over <paramref name="cache"/> (which it extends).</summary>
    internal static List<int> CpuAnswer(LanguageModel model, int[] q, PagedKvCache cache, int tokens)
    {
        var answer = new List<int>();
        var logits = model.Transformer.Forward(q, cache);
        for (int s = 0; s < tokens; s++)
        {
            answer.Add(ArgMax(logits));
            if (s + 1 < tokens) logits = model.Transformer.Forward([answer[^1]], cache);
        }
        return answer;
    }

    internal static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }
}
