using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Recall;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;

namespace KvSharp.Tests.Compression.Recall;

/// <summary>ClusterKV against a float64 re-implementation: cosine k-means, cluster selection, attention over the selection.</summary>
public class ClusterKvTests
{
    private const int Layers = 2, Heads = 4, KvHeads = 2, D = 8, N = 60, Group = Heads / KvHeads;

    private sealed class Setup : IDisposable
    {
        private readonly Random _rng = new(23);

        public Setup()
        {
            Inner = new PagedKvCache(Layers, Heads, KvHeads, D, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, BlockTokens = 4, MaxTokens = 256 });
            for (int l = 0; l < Layers; l++)
            {
                var k = Random(N * KvHeads * D);
                var v = Random(N * KvHeads * D);
                Inner.Append(l, k, v, N);
                K[l] = k; V[l] = v;
            }
        }

        public PagedKvCache Inner { get; }
        public float[][] K { get; } = new float[Layers][];
        public float[][] V { get; } = new float[Layers][];

        public float[] Random(int n) => [.. Enumerable.Range(0, n).Select(_ => (float)(_rng.NextDouble() * 2 - 1))];

        /// <summary>Key (or value) of position t in KV head g of a layer, as double.</summary>
        public static double[] Row(float[] rows, int t, int g) => [.. rows.AsSpan((t * KvHeads + g) * D, D).ToArray().Select(x => (double)x)];

        public void Dispose() => Inner.Dispose();
    }

    private static double Dot(double[] a, double[] b) => a.Zip(b, (x, y) => x * y).Sum();

    private static double[] Unit(double[] x)
    {
        double n = Math.Sqrt(Dot(x, x));
        return n > 0 ? [.. x.Select(v => v / n)] : new double[x.Length];
    }

    /// <summary>The float64 spherical k-means: init rows ⌊c·n/k⌋, assign/update per iteration, final assignment.</summary>
    private static (double[][] Centroids, int[] Assignment) KMeans(double[][] rows, int k, int iterations)
    {
        var unit = rows.Select(Unit).ToArray();
        int n = unit.Length;
        var centroids = Enumerable.Range(0, k).Select(c => unit[(int)((long)c * n / k)].ToArray()).ToArray();
        int[] Assign() => [.. unit.Select(x => Enumerable.Range(0, k).Aggregate(0, (best, c) => Dot(x, centroids[c]) > Dot(x, centroids[best]) ? c : best))];
        for (int it = 0; it < iterations; it++)
        {
            var a = Assign();
            for (int c = 0; c < k; c++)
            {
                var members = Enumerable.Range(0, n).Where(i => a[i] == c).ToArray();
                if (members.Length == 0) continue;
                centroids[c] = Unit([.. Enumerable.Range(0, D).Select(j => members.Sum(i => unit[i][j]))]);
            }
        }
        return (centroids, Assign());
    }

    [Fact]
    public void ClustersSelectionAndAttentionMatchFloat64()
    {
        const int sinks = 2, clusters = 6, iterations = 5, budget = 20;
        using var s = new Setup();
        using var cache = ClusterKvCache.Attach(s.Inner, Heads, new ClusterKvOptions { Tokens = budget, Clusters = clusters, Iterations = iterations, Sinks = sinks });
        // One decode step: a new token appended to every layer, then its query attends.
        var newK = new float[Layers][];
        var newV = new float[Layers][];
        for (int l = 0; l < Layers; l++)
        {
            newK[l] = s.Random(KvHeads * D);
            newV[l] = s.Random(KvHeads * D);
            cache.Append(l, newK[l], newV[l], 1);
        }
        for (int l = 0; l < Layers; l++)
        {
            var q = s.Random(Heads * D);
            var output = new float[Heads * D];
            cache.Attend(l, q, 1, N, output);
            for (int g = 0; g < KvHeads; g++)
            {
                var keys = Enumerable.Range(sinks, N - sinks).Select(t => Setup.Row(s.K[l], t, g)).ToArray();
                var (centroids, assignment) = KMeans(keys, clusters, iterations);
                var actual = cache.Clusters(l, g);
                var expectedSets = Enumerable.Range(0, clusters).Select(c => Enumerable.Range(0, keys.Length).Where(i => assignment[i] == c).Select(i => sinks + i).ToArray())
                    .Where(m => m.Length > 0).ToArray();
                Assert.Equal(expectedSets.Select(m => string.Join(",", m)), actual.Select(c => string.Join(",", c.Positions)));
                int[] live = [.. Enumerable.Range(0, clusters).Where(c => assignment.Contains(c))];
                for (int c = 0; c < live.Length; c++)
                    for (int j = 0; j < D; j++) Assert.True(Math.Abs(centroids[live[c]][j] - actual[c].Centroid[j]) < 1e-5, $"centroid {c}");

                // Selection: clusters by Σ_h q_h·centroid, whole, within the budget; plus sinks and the new token.
                var qh = Enumerable.Range(g * Group, Group).Select(h => q.AsSpan(h * D, D).ToArray().Select(x => (double)x).ToArray()).ToArray();
                var order = live.Select((c, i) => (Score: qh.Sum(x => Dot(x, centroids[c])), Index: i)).OrderByDescending(x => x.Score).ThenBy(x => x.Index);
                var chosen = new List<int>(Enumerable.Range(0, sinks));
                int used = 0;
                foreach (var (_, i) in order)
                {
                    if (used + expectedSets[i].Length > budget) break;
                    used += expectedSets[i].Length;
                    chosen.AddRange(expectedSets[i]);
                }
                chosen.Add(N);
                chosen.Sort();
                Assert.Equal(chosen, cache.SelectPositions(l, g, q.AsSpan(g * Group * D, Group * D)));
                Assert.True(used > 0 && chosen.Count < N, "the budget selects some clusters, not all");

                // Attention over exactly the selected tokens.
                for (int h = g * Group; h < (g + 1) * Group; h++)
                {
                    var qv = qh[h - g * Group];
                    double[] KeyAt(int t) => t == N ? Setup.Row(newK[l], 0, g) : Setup.Row(s.K[l], t, g);
                    double[] ValueAt(int t) => t == N ? Setup.Row(newV[l], 0, g) : Setup.Row(s.V[l], t, g);
                    var logits = chosen.Select(t => Dot(qv, KeyAt(t)) / Math.Sqrt(D)).ToArray();
                    double max = logits.Max(), sum = logits.Sum(x => Math.Exp(x - max));
                    for (int j = 0; j < D; j++)
                    {
                        double expected = chosen.Select((t, i) => Math.Exp(logits[i] - max) / sum * ValueAt(t)[j]).Sum();
                        Assert.True(Math.Abs(expected - output[h * D + j]) < 1e-5, $"layer {l} head {h} dim {j}: {expected} vs {output[h * D + j]}");
                    }
                }
            }
        }
    }

    [Fact]
    public void ABudgetCoveringEverythingIsFullAttention()
    {
        using var s = new Setup();
        using var fork = s.Inner.Fork();
        using var cache = ClusterKvCache.Attach(s.Inner, Heads, new ClusterKvOptions { Tokens = N, Clusters = 7, Iterations = 3 });
        for (int l = 0; l < Layers; l++)
        {
            var k = s.Random(KvHeads * D);
            var v = s.Random(KvHeads * D);
            cache.Append(l, k, v, 1);
            fork.Append(l, k, v, 1);
            var q = s.Random(Heads * D);
            var selected = new float[Heads * D];
            var full = new float[Heads * D];
            cache.Attend(l, q, 1, N, selected);
            fork.Attend(l, q, 1, N, full);
            for (int i = 0; i < full.Length; i++) Assert.True(Math.Abs(full[i] - selected[i]) < 1e-5, $"layer {l} element {i}: {full[i]} vs {selected[i]}");
        }
    }

    [Fact]
    public void OnARealModel_AFullBudgetGivesTheSameGreedyOutput_AndASmallOneStillGenerates()
    {
        using var model = LanguageModel.Load(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        var prompt = model.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends.");
        var options = new GenerationOptions { MaxTokens = 40, Sampler = SamplerOptions.Greedy, StopAtEos = false };
        IReadOnlyList<int> Run(ClusterKvOptions? recall)
        {
            var paged = (PagedKvCache)model.CreateCache(512, KvCacheSpec.Parse("f32"));
            model.Transformer.Forward(prompt[..^1], paged);
            using IKvCache cache = recall == null ? paged : ClusterKvCache.Attach(paged, model.Config.NumHeads, recall, ownsInner: true);
            try { return model.CreateGenerator().Generate(prompt[^1..], cache, 512, options).TokenIds; }
            finally { if (recall == null) paged.Dispose(); }
        }
        var full = Run(null);
        Assert.Equal(full, Run(new ClusterKvOptions { Tokens = 512, Clusters = 8, Iterations = 5, Every = 16 }));
        Assert.Equal(40, Run(new ClusterKvOptions { Tokens = 8, Clusters = 8, Iterations = 5, Every = 16 }).Count);
    }

    [Fact]
    public void TruncateDropsLaterTokensFromTheCopyAndTheClusters()
    {
        using var s = new Setup();
        using var cache = ClusterKvCache.Attach(s.Inner, Heads, new ClusterKvOptions { Tokens = 10, Clusters = 5, Iterations = 2, Sinks = 0 });
        cache.Truncate(30);
        Assert.Equal(30, cache.Length);
        Assert.All(cache.Clusters(0, 1), c => Assert.All(c.Positions, p => Assert.True(p < 30)));
        Assert.Equal(30, cache.Clusters(1, 0).Sum(c => c.Positions.Length));
    }

    [Fact]
    public void TheEvalFactoryTurnsTheKeepRatioIntoTheBudget()
    {
        var compressor = Assert.IsType<KvSharp.Evaluation.Running.ClusterKvCompressor>(new KvSharp.Evaluation.Running.PressCompressorFactory().Create("clusterkv:clusters=64", 0.25));
        Assert.Equal("clusterkv:keep=0.25,clusters=64,iters=20,sinks=4,every=320", compressor.Name);
        using var s = new Setup();
        using var cache = ClusterKvCache.Attach(s.Inner, Heads, compressor.Options with { Sinks = 2, Iterations = 2 });
        Assert.Equal(N - 2, cache.AttachedTokens);
        Assert.Equal(15, cache.Budget); // round(0.25 × 58)
    }

    [Fact]
    public void TextFormParsesBackAndBadOnesNameTheProblem()
    {
        var o = ClusterKvOptions.Parse("clusterkv:keep=0.25,clusters=64");
        Assert.Equal("clusterkv:keep=0.25,clusters=64,iters=20,sinks=4,every=320", o.Text);
        Assert.Equal(o, ClusterKvOptions.Parse(o.Text));
        Assert.Equal("clusterkv:tokens=1024,clusters=400,iters=20,sinks=4,every=320", ClusterKvOptions.Parse("clusterkv").Text);
        Assert.Contains("valid parameters: clusters, every, iters, keep, sinks, tokens", Assert.Throws<KvSharpException>(() => ClusterKvOptions.Parse("clusterkv:budget=3")).Message);
        Assert.Contains("not both", Assert.Throws<KvSharpException>(() => ClusterKvOptions.Parse("clusterkv:keep=0.2,tokens=5")).Message);
    }
}
