using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Models;
using KvSharp.Tests.Reference;

namespace KvSharp.Tests.Compression;

/// <summary>A tiny random model and a paged cache filled with known random keys and values (no forward pass needed).</summary>
internal sealed class SyntheticCache : IDisposable
{
    public SyntheticCache(int tokens, KvFormat format = KvFormat.F32, int seed = 3, int blockTokens = 4, string config = "gqa2-halfsplit-tied")
    {
        Model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig(config));
        var c = Model.Config;
        Transformer = new Transformer(Model.Weights);
        Cache = new PagedKvCache(c, new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, BlockTokens = blockTokens, MaxTokens = tokens + 64 });
        int row = c.NumKvHeads * c.HeadDim;
        var rng = new Random(seed);
        Keys = new float[c.NumLayers][];
        for (int l = 0; l < c.NumLayers; l++)
        {
            // Per-token scales spread the key norms so that norm rankings are not ties.
            var k = new float[tokens * row];
            var v = new float[tokens * row];
            for (int i = 0; i < k.Length; i++) { k[i] = (rng.NextSingle() * 2 - 1) * (1 + i / row % 7); v[i] = rng.NextSingle() * 2 - 1; }
            Cache.Append(l, k, v, tokens);
            Keys[l] = k;
        }
        Tokens = ReferenceModels.RandomTokens(tokens, c.VocabSize);
    }

    public RandomModel Model { get; }
    public Transformer Transformer { get; }
    public PagedKvCache Cache { get; }

    /// <summary>Appended keys per layer, [tokens, kvHeads × headDim].</summary>
    public float[][] Keys { get; }

    public int[] Tokens { get; }

    public ModelConfig Config => Model.Config;

    public PressContext Context(int protectedPrefix = 0) => new(Transformer, Cache, Tokens) { ProtectedPrefix = protectedPrefix };

    public void Dispose()
    {
        Cache.Dispose();
        Model.Dispose();
    }
}

/// <summary>Scores built by hand for budget tests.</summary>
internal static class Scores
{
    public static HeadScores Of(int layers, int kvHeads, params float[][] heads)
    {
        var s = new HeadScores(layers, kvHeads);
        for (int i = 0; i < heads.Length; i++) s[i / kvHeads, i % kvHeads] = heads[i];
        return s;
    }

    public static float[] Ramp(int n, float start = 0, float step = 1) => Enumerable.Range(0, n).Select(i => start + i * step).ToArray();
}
