using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Generation;
using KvSharp.Models;
using KvSharp.Tests.Reference;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>The paged cache behind the transformer: against the float cache, and against llama.cpp's greedy run.</summary>
public class PagedKvCacheTransformerTests
{
    /// <summary>F32 blocks give the float cache's logits for prefill, chunked prefill (causal masking) and decode.</summary>
    [Fact]
    public void F32PagedCache_GivesFullPrecisionLogits()
    {
        using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig("gqa2-halfsplit-tied"));
        var tokens = ReferenceModels.RandomTokens(45, model.Config.VocabSize);
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, BlockTokens = 8, MaxTokens = 64 };
        foreach (int chunk in new[] { 512, 5 })
        {
            var engine = new Transformer(model.Weights) { PrefillChunk = chunk };
            using var full = new FullPrecisionKvCache(model.Config, 64);
            using var paged = new PagedKvCache(model.Config, options);
            var expected = engine.Forward(tokens.AsSpan(0, 40), full, LogitsMode.All);
            var actual = engine.Forward(tokens.AsSpan(0, 40), paged, LogitsMode.All);
            PagedTestData.AssertClose(expected, actual, 1e-5, $"prefill in chunks of {chunk}");
            for (int t = 40; t < tokens.Length; t++)
                PagedTestData.AssertClose(engine.Forward(tokens.AsSpan(t, 1), full), engine.Forward(tokens.AsSpan(t, 1), paged), 1e-5, $"decode {t}");
        }
    }

    /// <summary>stories260K (head dimension 8) with F16 keys and values: llama.cpp's greedy ids (it ran with an F16 cache).</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Stories260K_F16PagedCache_ReproducesLlamaCppGreedy(int prompt)
    {
        using var model = LanguageModel.Load(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        var reference = ReferenceOutput.Load(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json"))[prompt];
        int steps = reference.GreedyIds.Length;
        using var cache = new PagedKvCache(model.Config, new PagedKvCacheOptions
        {
            KeyFormat = KvFormat.F16,
            ValueFormat = KvFormat.F16,
            MaxTokens = reference.PromptIds.Length + steps + 1,
        });
        var logits = model.Transformer.Forward(reference.PromptIds, cache);
        var greedy = new int[steps];
        for (int i = 0; i < steps; i++)
        {
            int best = 0;
            for (int j = 1; j < logits.Length; j++) if (logits[j] > logits[best]) best = j;
            greedy[i] = best;
            if (i + 1 < steps) logits = model.Transformer.Forward([best], cache);
        }
        Assert.Equal(reference.GreedyIds, greedy);
        // Length tokens per head: the full 32-token blocks in F16 (2 bytes) and the partial tail in F32 (4 bytes), K and V.
        int length = reference.PromptIds.Length + steps - 1, blocked = length / 32 * 32;
        long perChannel = 2L * model.Config.NumLayers * model.Config.NumKvHeads * model.Config.HeadDim;
        Assert.Equal(length, cache.Length);
        Assert.Equal(perChannel * (blocked * 2 + (length - blocked) * 4), cache.ByteCount);
        Assert.Equal(length * 2.0 / (blocked * 2 + (length - blocked) * 4), cache.CompressionRatio, 12);
    }
}
