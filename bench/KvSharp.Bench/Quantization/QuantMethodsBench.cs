using System.Globalization;
using System.Text.Json;
using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Registry;
using KvSharp.Evaluation.Metrics;
using KvSharp.Generation;
using KvSharp.Models;

namespace KvSharp.Bench.Quantization;

/// <summary>
/// <c>quant-methods [--kvtuner-stories FILE] [--kvtuner-needle FILE] [--samples N] [--filter TEXT]</c>: the quantization
/// presses measured on real models (the filter keeps the methods whose name contains it, and F16, e.g. <c>VidKV</c>;
/// each KVTuner file is a configuration searched for that model's layers by <c>kvsharp calibrate kvtuner</c>).
/// Per method: KV bytes per token from the cache's accounting, attention output error against a float32 cache on the
/// same queries, KL of next-token distributions on TinyStories text (stories260k) and retrieval on
/// needle_eval NIAH samples (kvsharp-needle-16m; a smoke test: the accuracy is the evaluation harness's). Prints a
/// markdown table.
/// </summary>
internal static class QuantMethodsBench
{
    private static readonly string Shared = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../../../shared"));

    public static void Run(string[] args)
    {
        string? kvtunerStories = null, kvtunerNeedle = null, filter = null;
        int samples = 8;
        for (int i = 1; i < args.Length; i++)
        {
            string value = i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"quant-methods: {args[i]} needs a value");
            switch (args[i])
            {
                case "--kvtuner-stories": kvtunerStories = value; break;
                case "--kvtuner-needle": kvtunerNeedle = value; break;
                case "--samples": samples = int.Parse(value, CultureInfo.InvariantCulture); break;
                case "--filter": filter = value; break;
                default: throw new ArgumentException($"quant-methods: unknown option '{args[i]}' (--kvtuner-stories, --kvtuner-needle, --samples, --filter)");
            }
            i++;
        }
        // (name, press on stories260k, press on the needle model): only KVTuner's differs, a configuration per model.
        var methods = new List<(string Name, string? Stories, string? Needle)>();
        void Add(string name, string? press) => methods.Add((name, press, press));
        Add("F16 (no press)", null);
        Add("KIVI-4 (r=32)", "kivi:bits=4,residual=32");
        Add("KIVI-2 (r=32)", "kivi:bits=2,residual=32");
        Add("MiKV int8/int2 top 0.2 (h2o), keys=token", "mikv(h2o):high=int8,low=int2,top=0.2,keys=token");
        Add("MiKV int8/int2 top 0.2 (h2o), keys=channel", "mikv(h2o):high=int8,low=int2,top=0.2,keys=channel");
        Add("MiKV int8/int2 top 0.2 (kvzip), keys=token", "mikv(kvzip):high=int8,low=int2,top=0.2,keys=token");
        Add("MiKV int8/int2 top 0.2 (kvzip), keys=channel", "mikv(kvzip):high=int8,low=int2,top=0.2,keys=channel");
        Add("ZipVL tau 0.95 int8/int2 (snapkv)", "zipvl(snapkv):tau=0.95,high=int8,low=int2");
        Add("ZipVL tau 0.95 int8/int2 (kvzip)", "zipvl(kvzip):tau=0.95,high=int8,low=int2");
        Add("LeanKV 0.9/0.99 K8V4/K4V2/prune (snapkv)", "leankv(snapkv):high=0.9,low=0.99");
        Add("LeanKV 0.9/0.99 K8V4/K4V2/prune (kvzip)", "leankv(kvzip):high=0.9,low=0.99");
        Add("LeanKV 0.9 K8V4/K4V2, no pruning (snapkv)", "leankv(snapkv):high=0.9,low=0.99,prune=false");
        Add("LeanKV 0.9 K8V4/K4V2, no pruning (kvzip)", "leankv(kvzip):high=0.9,low=0.99,prune=false");
        Add("VidKV K1.5/V1.6, 2 salient/32 (r=32)", "vidkv:outliers=0.5,salient=2,residual=32");
        Add("VidKV K1.5/V1.6, 2 salient/32 (r=0)", "vidkv:outliers=0.5,salient=2,residual=0");
        Add("VidKV K1.25, no salient (r=32)", "vidkv:outliers=0.25,salient=0,residual=32");
        if (kvtunerStories != null || kvtunerNeedle != null)
            methods.Add(("KVTuner (searched per model)", kvtunerStories is null ? null : $"kvtuner:file={kvtunerStories}", kvtunerNeedle is null ? null : $"kvtuner:file={kvtunerNeedle}"));
        if (filter != null) methods.RemoveAll(m => m.Name != "F16 (no press)" && !m.Name.Contains(filter, StringComparison.OrdinalIgnoreCase));

        string storiesPath = Path.Combine(Shared, "models/stories260k/stories260K.gguf");
        using (var stories = LanguageModel.Load(storiesPath))
        {
            var text = stories.Encode(File.ReadAllText(Path.Combine(Shared, "data/misc/tinystories_valid_excerpt.txt")));
            Console.WriteLine($"stories260k: {text.Length} tokens of TinyStories; context 256, scored 128 (x2 windows)");
            foreach (var (name, press, _) in methods)
            {
                if (name.StartsWith("KVTuner", StringComparison.Ordinal) && press is null) continue; // no configuration for this model
                var acc = new Accumulator();
                for (int w = 0; w < 2; w++)
                {
                    var window = text.Skip(w * 384).Take(384).ToArray();
                    Measure(stories, window[..256], window[256..], press, acc, out _);
                }
                Console.WriteLine($"| stories260k | {name} | {acc.BytesPerToken:F1} | {acc.AttentionError:E2} | {acc.Kl:E2} | |");
            }
        }

        using var needle = LanguageModel.Load(Path.Combine(Shared, "models/kvsharp-needle-16m"));
        var rows = File.ReadLines(Path.Combine(Shared, "data/needle_eval/eval_public.jsonl"))
            .Select(l => JsonDocument.Parse(l).RootElement)
            .Where(r => r.GetProperty("task").GetString()!.StartsWith("niah_single", StringComparison.Ordinal) && r.GetProperty("full_cache_correct").GetBoolean())
            .OrderBy(r => r.GetProperty("length").GetInt32()).Take(samples).ToList();
        Console.WriteLine($"needle-16m: {rows.Count} niah_single samples the full cache answers correctly, {rows.Average(r => r.GetProperty("length").GetInt32()):F0} tokens on average");
        foreach (var (name, _, press) in methods)
        {
            if (name.StartsWith("KVTuner", StringComparison.Ordinal) && press is null) continue; // no configuration for this model
            var acc = new Accumulator();
            int correct = 0;
            foreach (var r in rows)
            {
                string input = r.GetProperty("input").GetString()!;
                int q = input.LastIndexOf("What is the special magic", StringComparison.Ordinal);
                var context = needle.Encode(input[..q]);
                var question = needle.Tokenizer.Encode(input[q..], addSpecial: false);
                Measure(needle, context, question, press, acc, out var answer);
                string expected = r.GetProperty("outputs")[0].GetString()!;
                if (needle.Tokenizer.Decode(answer).Contains(expected, StringComparison.Ordinal)) correct++;
            }
            Console.WriteLine($"| needle-16m | {name} | {acc.BytesPerToken:F1} | {acc.AttentionError:E2} | | {correct}/{rows.Count} |");
        }
    }

    private sealed class Accumulator
    {
        public double ErrorSquares, ReferenceSquares, KlSum, Bytes;
        public long KlCount, Tokens;
        public double BytesPerToken => Bytes / Tokens;
        public double AttentionError => Math.Sqrt(ErrorSquares / ReferenceSquares);
        public double Kl => KlSum / KlCount;
    }

    /// <summary>
    /// Prefills <paramref name="context"/> (float32 reference; the press starts from an F16 copy), compresses, then runs
    /// <paramref name="next"/> teacher-forced through a probe that attends with both caches on the same queries, and
    /// greedily decodes 24 tokens after it (the answer).
    /// </summary>
    private static void Measure(LanguageModel model, int[] context, int[] next, string? press, Accumulator acc, out List<int> answer)
    {
        var config = model.Config;
        int max = context.Length + next.Length + 32;
        using var reference = new PagedKvCache(config, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = max });
        model.Transformer.Forward(context, reference);
        using var compressed = reference.Fork();
        for (int l = 0; l < config.NumLayers; l++)
            for (int h = 0; h < config.NumKvHeads; h++)
                compressed.Requantize(l, h, Enumerable.Repeat(true, compressed.Positions(l, h).Count).ToArray(), KvFormat.F16, KvFormat.F16);
        // PressContext.For gives KVzip the tokenizer it writes its repeat request with.
        if (press != null) PressRegistry.Parse(press).Compress(PressContext.For(model, compressed, context));
        acc.Bytes += compressed.ByteCount;
        acc.Tokens += context.Length;

        using var refRun = reference.Fork();
        var refLogits = model.Transformer.Forward(next, refRun, LogitsMode.All);
        using var probe = new Probe(compressed, reference.Fork(), acc);
        var logits = model.Transformer.Forward(next, probe, LogitsMode.All);
        int vocab = config.VocabSize;
        for (int t = 0; t < next.Length; t++)
        {
            acc.KlSum += LanguageModelMetrics.KlDivergence(refLogits.AsSpan(t * vocab, vocab), logits.AsSpan(t * vocab, vocab));
            acc.KlCount++;
        }
        answer = new List<int>();
        var last = logits.AsSpan((next.Length - 1) * vocab, vocab).ToArray();
        for (int i = 0; i < 24; i++)
        {
            int token = LanguageModelMetrics.ArgMax(last);
            if (model.Tokenizer.EosIds.Contains(token)) break;
            answer.Add(token);
            last = model.Transformer.Forward([token], probe);
        }
    }

    /// <summary>A cache that is the compressed one for the model, and also attends with the reference on the same queries.</summary>
    private sealed class Probe(PagedKvCache compressed, PagedKvCache reference, Accumulator acc) : IKvCache
    {
        public int Length => compressed.Length;
        public long ByteCount => compressed.ByteCount;

        public void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
        {
            compressed.Append(layer, keys, values, count);
            reference.Append(layer, keys, values, count);
        }

        public void Attend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, Span<float> output)
        {
            compressed.Attend(layer, queries, count, firstPosition, output);
            var r = new float[output.Length];
            reference.Attend(layer, queries, count, firstPosition, r);
            for (int i = 0; i < r.Length; i++)
            {
                double d = output[i] - r[i];
                acc.ErrorSquares += d * d;
                acc.ReferenceSquares += (double)r[i] * r[i];
            }
        }

        public void Truncate(int length) => throw new NotSupportedException("the probe only appends");

        public void Dispose() => reference.Dispose();
    }
}
