using KvSharp.Cache;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;
using KvSharp.Models;
using KvSharp.Tests.Reference;
using Xunit.Abstractions;

namespace KvSharp.Tests.Models;

/// <summary>
/// The engine (loaders, tokenizers, kernels, transformer, cache, generator) against independent references:
/// llama.cpp's and transformers' recorded outputs, and the float64 oracle of tests/Reference.
/// </summary>
public class EngineExactnessTests(ITestOutputHelper output)
{
    private static readonly Lazy<LanguageModel> Stories260K =
        new(() => LanguageModel.Load(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf")));
    private static readonly Lazy<LanguageModel> Stories260KLlamaCpp =
        new(() => LanguageModel.Load(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"), CpuNumerics.LlamaCpp));
    private static readonly Lazy<LanguageModel> TinyStories656K =
        new(() => LanguageModel.Load(RepoPaths.SharedFile("models", "tinystories-656k")));
    private static readonly Lazy<LanguageModel> Needle16M =
        new(() => LanguageModel.Load(RepoPaths.SharedFile("models", "kvsharp-needle-16m")));

    public static IEnumerable<object[]> Prompts() => Enumerable.Range(0, 4).Select(i => new object[] { i });

    /// <summary>
    /// stories260K vs llama.cpp with the engine's Fast arithmetic: the prompt's token ids, all 200 greedy ids, and the
    /// top-20 logits of the 8 recorded steps within 2e-3 relative (|ours − llama.cpp| ≤ 2e-3 · max(1, |llama.cpp|);
    /// measured worst 1.6e-3, prompt 3 step 4). Not 1e-4: the Fast path keeps K and V in float32 and sums in its own order,
    /// while llama.cpp ran with its default F16 KV cache and f16 flash-attention accumulator, where a one-ulp difference
    /// upstream flips an f16 rounding. <see cref="Stories260K_LlamaCppNumerics_ReproducesLlamaCppBitForBit"/> takes
    /// llama.cpp's arithmetic and matches bit for bit.
    /// </summary>
    [Theory]
    [MemberData(nameof(Prompts))]
    public void Stories260K_ReproducesLlamaCpp(int index)
    {
        var reference = ReferenceOutput.Load(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json"))[index];
        var model = Stories260K.Value;
        Assert.Equal(reference.PromptIds, model.Encode(reference.Prompt));
        var (greedy, top20) = RunGreedy(model, reference.PromptIds, reference.GreedyIds.Length, reference.Top20.Length);
        Assert.Equal(reference.GreedyIds, greedy);
        AssertTop20(reference.Top20, top20, tolerance: 2e-3);
    }

    /// <summary>
    /// Issue 2, 8(a): stories260K in <see cref="CpuNumerics.LlamaCpp"/> vs llama.cpp. The prompt's ids, the prompt decoded
    /// as one batch, then all 200 greedy ids one token at a time as llama.cpp did, and every recorded top-20 logit of the 8
    /// recorded steps within 1e-6 relative and, parsed to float (the file keeps 8 significant digits), equal to ours bit
    /// for bit; the same top-20 tokens in the same order.
    /// </summary>
    /// <remarks>
    /// 1e-6 is the 1e-4 of the issue with two orders of magnitude to spare, and it takes all of llama.cpp's rounding: with
    /// the Fast arithmetic the same run is 1.6e-3 off (<see cref="Stories260K_ReproducesLlamaCpp"/>), and a single deviation
    /// from ggml's arithmetic moves these logits by 1e-6..5e-4 (docs/exactness.md).
    /// </remarks>
    [Theory]
    [MemberData(nameof(Prompts))]
    public void Stories260K_LlamaCppNumerics_ReproducesLlamaCppBitForBit(int index)
    {
        var reference = ReferenceOutput.Load(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json"))[index];
        var model = Stories260KLlamaCpp.Value;
        Assert.Equal(reference.PromptIds, model.Encode(reference.Prompt));
        var (greedy, top20) = RunGreedy(model, reference.PromptIds, reference.GreedyIds.Length, reference.Top20.Length);
        Assert.Equal(reference.GreedyIds, greedy);
        double worst = AssertTop20(reference.Top20, top20, tolerance: 1e-6);
        for (int step = 0; step < top20.Length; step++)
        {
            var ours = top20[step].Select((v, i) => (v, i)).OrderByDescending(p => p.v).Take(20).Select(p => p.i);
            Assert.Equal(reference.Top20[step].Select(p => p.Token), ours);
            // Bit for bit: each recorded value (8 significant digits) parsed to float is the engine's float.
            foreach (var (token, logit) in reference.Top20[step]) Assert.Equal((float)logit, top20[step][token]);
        }
        output.WriteLine($"'{reference.Prompt}': {greedy.Length} greedy ids equal, worst top-20 relative error {worst:E2}");
    }

    /// <summary>kvsharp-needle-16m vs transformers (float32): prompt ids, greedy ids, top-20 logits within 1e-3 relative.</summary>
    [Theory]
    [MemberData(nameof(Prompts))]
    public void Needle16M_ReproducesTransformers(int index)
    {
        var reference = ReferenceOutput.Load(RepoPaths.SharedFile("reference", "kvsharp-needle-16m.transformers.json"))[index];
        var model = Needle16M.Value;
        Assert.Equal(reference.PromptIds, model.Encode(reference.Prompt));
        var (greedy, top20) = RunGreedy(model, reference.PromptIds, reference.GreedyIds.Length, reference.Top20.Length);
        Assert.Equal(reference.GreedyIds, greedy);
        AssertTop20(reference.Top20, top20, tolerance: 1e-3);
    }

    [Fact]
    public void Needle16M_AnswersItsNeedlePrompt()
    {
        var model = Needle16M.Value;
        var reference = ReferenceOutput.Load(RepoPaths.SharedFile("reference", "kvsharp-needle-16m.transformers.json"))
            .Single(r => r.Prompt.StartsWith("A special magic number", StringComparison.Ordinal));
        using var cache = model.CreateCache(model.Config.MaxContext);
        var result = model.CreateGenerator().Generate(reference.PromptIds, cache, model.Config.MaxContext,
            new GenerationOptions { MaxTokens = 12, Sampler = SamplerOptions.Greedy, StopStrings = ["\n"] });
        // The needle sentence in the prompt: "One of the special magic numbers for <key> is: <value>."
        var value = System.Text.RegularExpressions.Regex.Match(reference.Prompt, @"special magic numbers? for [\w-]+ is: (\d+)\.").Groups[1].Value;
        Assert.False(string.IsNullOrEmpty(value));
        Assert.Contains(value, result.Text);
    }

    [Fact]
    public void TinyStories656K_TellsTheStoryFromBos()
    {
        var model = TinyStories656K.Value;
        Assert.NotNull(model.Tokenizer.BosId);
        using var cache = model.CreateCache(model.Config.MaxContext);
        var result = model.CreateGenerator().Generate([model.Tokenizer.BosId!.Value], cache, model.Config.MaxContext,
            new GenerationOptions { MaxTokens = 40, Sampler = SamplerOptions.Greedy });
        Assert.StartsWith("Once upon a time, there was a little girl named Lily. She had a toy car", result.Text.TrimStart());
    }

    [Fact]
    public void Stories260K_LogitsEqualFloat64Oracle() =>
        AssertMatchesOracle(Stories260K.Value.Transformer, ReferenceTransformer.FromModelWeights(Stories260K.Value.Weights),
            Stories260K.Value.Encode("Once upon a time, there was a little dog"), 1e-4);

    [Fact]
    public void TinyStories656K_LogitsEqualFloat64Oracle() =>
        AssertMatchesOracle(TinyStories656K.Value.Transformer, ReferenceTransformer.FromModelWeights(TinyStories656K.Value.Weights),
            TinyStories656K.Value.Encode("Once upon a time, there was a big red ball"), 1e-4);

    public static IEnumerable<object[]> Variants() => ReferenceModels.RandomConfigNames();

    /// <summary>Every architecture variant, prefill of all tokens and token-by-token decode, against the oracle.</summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void DummyVariant_LogitsEqualFloat64Oracle(string name)
    {
        using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig(name));
        var tokens = ReferenceModels.RandomTokens(19, model.Config.VocabSize);
        AssertMatchesOracle(new Transformer(model.Weights), model.Reference, tokens, 1e-4);
    }

    public static IEnumerable<object[]> UnscaledVariants() =>
        ReferenceModels.RandomConfigs().Where(c => c.Config.RopeScaling is null).Select(c => new object[] { c.Name });

    /// <summary>
    /// <see cref="CpuNumerics.LlamaCpp"/> on every architecture variant it covers (all but RoPE scaling), F32 and F16
    /// weights: prefill, chunked prefill and decode (the last through the batch-of-one last layer) within 5e-3 of the
    /// float64 oracle, the distance its f16 KV cache and f16 attention accumulator put between them.
    /// </summary>
    [Theory]
    [MemberData(nameof(UnscaledVariants))]
    public void DummyVariant_LlamaCppNumerics_CloseToFloat64Oracle(string name)
    {
        foreach (var type in new[] { GgmlType.F32, GgmlType.F16 })
        {
            using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig(name), linearType: type);
            var tokens = ReferenceModels.RandomTokens(19, model.Config.VocabSize);
            AssertMatchesOracle(new Transformer(model.Weights, CpuNumerics.LlamaCpp), model.Reference, tokens, 5e-3);
        }
    }

    /// <summary>Prefill (all rows), chunked prefill and token-by-token decode against the oracle's logits.</summary>
    private static void AssertMatchesOracle(Transformer engine, ReferenceTransformer oracle, int[] tokens, double tolerance)
    {
        var expected = oracle.Forward(tokens);
        int vocab = engine.Config.VocabSize;

        using (var cache = engine.CreateCache(tokens.Length))
        {
            var all = engine.Forward(tokens, cache, LogitsMode.All);
            for (int t = 0; t < tokens.Length; t++) AssertClose(expected[t], all.AsSpan(t * vocab, vocab), tolerance, $"prefill position {t}");
        }

        var chunked = new Transformer(engine.Weights, engine.Numerics) { PrefillChunk = 5 };
        using (var cache = chunked.CreateCache(tokens.Length))
        {
            var all = chunked.Forward(tokens, cache, LogitsMode.All);
            for (int t = 0; t < tokens.Length; t++) AssertClose(expected[t], all.AsSpan(t * vocab, vocab), tolerance, $"chunked prefill position {t}");
        }

        using (var cache = engine.CreateCache(tokens.Length))
        {
            int split = tokens.Length / 2;
            var last = engine.Forward(tokens.AsSpan(0, split), cache);
            AssertClose(expected[split - 1], last, tolerance, $"prefill last position {split - 1}");
            for (int t = split; t < tokens.Length; t++)
                AssertClose(expected[t], engine.Forward(tokens.AsSpan(t, 1), cache), tolerance, $"decode position {t}");
        }
    }

    /// <summary>|a - e| ≤ tol · max(1, max|e|) per element: relative to the row's scale so near-zero logits don't blow up.</summary>
    private static void AssertClose(double[] expected, ReadOnlySpan<float> actual, double tolerance, string where)
    {
        double scale = Math.Max(1, expected.Max(Math.Abs));
        for (int i = 0; i < expected.Length; i++)
        {
            double err = Math.Abs(actual[i] - expected[i]);
            Assert.True(err <= tolerance * scale, $"{where}, logit {i}: engine {actual[i]}, oracle {expected[i]}, error {err:E2} > {tolerance * scale:E2}");
        }
    }

    private static (int[] Greedy, float[][] Logits) RunGreedy(LanguageModel model, int[] prompt, int steps, int keepLogits)
    {
        using IKvCache cache = model.CreateCache(prompt.Length + steps + 1);
        var logits = model.Transformer.Forward(prompt, cache);
        var greedy = new int[steps];
        var kept = new float[keepLogits][];
        for (int i = 0; i < steps; i++)
        {
            if (i < keepLogits) kept[i] = logits;
            int best = 0;
            for (int j = 1; j < logits.Length; j++) if (logits[j] > logits[best]) best = j;
            greedy[i] = best;
            if (i + 1 < steps) logits = model.Transformer.Forward([best], cache);
        }
        return (greedy, kept);
    }

    /// <summary>
    /// Every reference top-20 entry within tolerance relative (|ours − reference| ≤ tolerance · max(1, |reference|)),
    /// and the same top-20 set.
    /// </summary>
    private static double AssertTop20((int Token, double Logit)[][] reference, float[][] ours, double tolerance)
    {
        double worst = 0;
        for (int step = 0; step < reference.Length; step++)
        {
            foreach (var (token, logit) in reference[step])
            {
                double rel = Math.Abs(ours[step][token] - logit) / Math.Max(1, Math.Abs(logit));
                worst = Math.Max(worst, rel);
                Assert.True(rel <= tolerance, $"step {step}, token {token}: ours {ours[step][token]:R}, reference {logit:R} (relative {rel:E2})");
            }
            var ourTop = ours[step].Select((v, i) => (v, i)).OrderByDescending(p => p.v).Take(20).Select(p => p.i).ToHashSet();
            var refTop = reference[step].Select(p => p.Token).ToHashSet();
            // Ties at the 20th place may swap; the first 19 must agree.
            Assert.True(refTop.Intersect(ourTop).Count() >= 19, $"step {step}: top-20 sets differ");
        }
        return worst;
    }
}
