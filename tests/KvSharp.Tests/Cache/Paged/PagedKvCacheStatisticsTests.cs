using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Generation;
using KvSharp.Models;
using KvSharp.Tests.Reference;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>
/// Attention statistics (max / sum of group-folded softmax probability per covered token, key norms) against a
/// float64 attention written here over the decoded keys, and against the float64 reference transformer.
/// </summary>
public class PagedKvCacheStatisticsTests
{
    private const int Layers = 2, KvHeads = 2, HeadDim = 32, BlockTokens = 32;

    /// <summary>The test's model of the cache: per (layer, head) the tokens (position, key as stored) and how many blocks are encoded.</summary>
    private sealed class Expected
    {
        private readonly List<(int Pos, float[] K)>[] _heads = Enumerable.Range(0, Layers * KvHeads).Select(_ => new List<(int, float[])>()).ToArray();
        private readonly int[] _encoded = new int[Layers * KvHeads];
        private readonly BlockLayout _keys;
        private readonly int _group;
        public double[][] Max = [], Sum = [];
        public int[] Covered = [];
        public int[] Queries = new int[Layers];

        public Expected(KvFormat format, int group) { _keys = BlockLayout.ForKeys(format, HeadDim, BlockTokens); _group = group; }

        public List<(int Pos, float[] K)> Head(int layer, int g) => _heads[layer * KvHeads + g];

        /// <summary>Appends, then replaces every newly full block by its codec round trip (the cache encodes a block once it is full).</summary>
        public void Append(int layer, int start, float[] keys, int count)
        {
            int row = KvHeads * HeadDim;
            for (int g = 0; g < KvHeads; g++)
            {
                var h = Head(layer, g);
                for (int t = 0; t < count; t++) h.Add((start + t, keys.AsSpan(t * row + g * HeadDim, HeadDim).ToArray()));
                ref int encoded = ref _encoded[layer * KvHeads + g];
                for (; (encoded + 1) * BlockTokens <= h.Count; encoded++)
                {
                    var k = new float[BlockTokens * HeadDim];
                    for (int t = 0; t < BlockTokens; t++) h[encoded * BlockTokens + t].K.CopyTo(k, t * HeadDim);
                    var bytes = new byte[_keys.ByteSize];
                    BlockCodec.Encode(_keys, k, BlockTokens, bytes);
                    BlockCodec.Decode(_keys, bytes, BlockTokens, k);
                    for (int t = 0; t < BlockTokens; t++) h[encoded * BlockTokens + t] = (h[encoded * BlockTokens + t].Pos, k.AsSpan(t * HeadDim, HeadDim).ToArray());
                }
            }
        }

        public void Begin()
        {
            Covered = _heads.Select(h => h.Count).ToArray();
            Max = Covered.Select(n => new double[n]).ToArray();
            Sum = Covered.Select(n => new double[n]).ToArray();
        }

        /// <summary>float64 softmax of every counted query row over the tokens it sees; folds and accumulates the covered ones.</summary>
        public void Attend(int layer, float[] queries, int count, int firstPosition, int firstCounted, GroupFold fold)
        {
            int heads = KvHeads * _group, qRow = heads * HeadDim;
            double scale = 1 / Math.Sqrt(HeadDim);
            for (int j = 0; j < count; j++)
            {
                int position = firstPosition + j;
                if (position < firstCounted) continue;
                Queries[layer]++;
                for (int g = 0; g < KvHeads; g++)
                {
                    var h = Head(layer, g);
                    int index = layer * KvHeads + g;
                    var folded = new double[Covered[index]];
                    for (int i = 0; i < _group; i++)
                    {
                        int head = g * _group + i;
                        var s = h.Select(x =>
                        {
                            if (x.Pos > position) return double.NegativeInfinity;
                            double dot = 0;
                            for (int c = 0; c < HeadDim; c++) dot += (double)queries[j * qRow + head * HeadDim + c] * x.K[c];
                            return dot * scale;
                        }).ToArray();
                        double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
                        for (int t = 0; t < folded.Length; t++)
                        {
                            double p = Math.Exp(s[t] - max) / sum;
                            folded[t] = fold == GroupFold.Max ? Math.Max(folded[t], p) : folded[t] + p / _group;
                        }
                    }
                    for (int t = 0; t < folded.Length; t++)
                    {
                        Max[index][t] = Math.Max(Max[index][t], folded[t]);
                        Sum[index][t] += folded[t];
                    }
                }
            }
        }

        public double[] KeyNorms(int layer, int g) =>
            Head(layer, g).Take(Covered[layer * KvHeads + g]).Select(x => Math.Sqrt(x.K.Sum(v => (double)v * v))).ToArray();
    }

    public static IEnumerable<object[]> Cases() =>
        from f in new[] { KvFormat.F32, KvFormat.F16, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2, KvFormat.Binary }
        from g in new[] { 1, 2, 4 }
        from fold in new[] { GroupFold.Max, GroupFold.Mean }
        select new object[] { f, g, fold, ((int)f + g) % 2 == 0 ? 60 : 100 };

    /// <summary>
    /// Prefill 75 tokens (two encoded blocks and a float tail per head), begin collecting, then: re-attend positions
    /// 50..74 (causal masking inside the covered tokens), a 40-token prefill chunk (whose appends encode the covered tail
    /// into a block shared with new tokens), three decode steps. Queries before FirstQueryPosition are not counted.
    /// Every attention output must be bit-identical to a cache that is not collecting.
    /// </summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void Statistics_EqualFloat64SoftmaxOverDecodedKeys(KvFormat format, int group, GroupFold fold, int firstCounted)
    {
        int heads = KvHeads * group, row = KvHeads * HeadDim, qRow = heads * HeadDim;
        var rng = new Random((int)format * 31 + group * 7 + firstCounted);
        var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, BlockTokens = BlockTokens, MaxTokens = 200 };
        using var cache = new PagedKvCache(Layers, heads, KvHeads, HeadDim, options);
        using var plain = new PagedKvCache(Layers, heads, KvHeads, HeadDim, options);
        var expected = new Expected(format, group);

        void Append(int n)
        {
            int start = cache.Length;
            for (int l = 0; l < Layers; l++)
            {
                var k = Gaussians(rng, n * row); var v = Gaussians(rng, n * row);
                cache.Append(l, k, v, n); plain.Append(l, k, v, n); expected.Append(l, start, k, n);
            }
        }

        void Attend(int layer, int first, int n)
        {
            var q = Gaussians(rng, n * qRow, 2);
            var actual = new float[n * qRow]; var reference = new float[n * qRow];
            cache.Attend(layer, q, n, first, actual);
            plain.Attend(layer, q, n, first, reference);
            Assert.Equal(reference, actual); // bit-identical: collection does not change attention
            expected.Attend(layer, q, n, first, firstCounted, fold);
        }

        Append(45); Append(30);
        cache.BeginStatistics(new AttentionStatisticsRequest(firstCounted, fold));
        Assert.True(cache.IsCollectingStatistics);
        expected.Begin();
        for (int l = 0; l < Layers; l++) Attend(l, 50, 25);
        int chunkStart = cache.Length;
        Append(40);
        for (int l = 0; l < Layers; l++) Attend(l, chunkStart, 40);
        for (int step = 0; step < 3; step++)
        {
            int position = cache.Length;
            Append(1);
            for (int l = 0; l < Layers; l++) Attend(l, position, 1);
        }
        var stats = cache.EndStatistics();
        Assert.False(cache.IsCollectingStatistics);

        Assert.Equal(Layers, stats.Layers);
        Assert.Equal(KvHeads, stats.KvHeads);
        for (int l = 0; l < Layers; l++)
        {
            Assert.Equal(expected.Queries[l], stats.QueryCount(l));
            for (int g = 0; g < KvHeads; g++)
            {
                string where = $"{format}, group {group}, {fold}, layer {l}, head {g}";
                Assert.Equal(Enumerable.Range(0, 75), stats.Positions(l, g));
                AssertClose(expected.Max[l * KvHeads + g], stats.MaxProbability(l, g), 2e-5, where + ", max");
                AssertClose(expected.Sum[l * KvHeads + g], stats.SumProbability(l, g), 1e-4, where + ", sum");
                AssertClose(expected.KeyNorms(l, g), stats.KeyNorms(l, g), 1e-5, where + ", key norms");
            }
        }
    }

    /// <summary>Every probability a query gives is counted once: the sums over covered and later tokens of a head come to the query count.</summary>
    [Fact]
    public void MeanFold_SumsOverAllTokensEqualQueryCount()
    {
        const int group = 4, heads = KvHeads * group;
        var rng = new Random(3);
        using var cache = new PagedKvCache(Layers, heads, KvHeads, HeadDim, new PagedKvCacheOptions { KeyFormat = KvFormat.Int4, ValueFormat = KvFormat.Int2, MaxTokens = 100 });
        for (int l = 0; l < Layers; l++) cache.Append(l, Gaussians(rng, 70 * KvHeads * HeadDim), Gaussians(rng, 70 * KvHeads * HeadDim), 70);
        cache.BeginStatistics(new AttentionStatisticsRequest(0, GroupFold.Mean));
        var o = new float[11 * heads * HeadDim];
        for (int l = 0; l < Layers; l++) cache.Attend(l, Gaussians(rng, 11 * heads * HeadDim, 3), 11, 59, o);
        var stats = cache.EndStatistics();
        for (int l = 0; l < Layers; l++)
            for (int g = 0; g < KvHeads; g++)
            {
                Assert.Equal(11, stats.QueryCount(l));
                double total = 0;
                foreach (var p in stats.SumProbability(l, g)) total += p;
                Assert.Equal(11, total, 4); // every query sees only covered tokens here: its probabilities sum to 1
            }
    }

    /// <summary>Operations that would remove or re-encode covered tokens are refused while collecting; Begin/End pair up.</summary>
    [Fact]
    public void WhileCollecting_EvictAndTruncateThrow()
    {
        using var cache = new PagedKvCache(1, 2, 1, 16, new PagedKvCacheOptions { MaxTokens = 64 });
        var rng = new Random(1);
        cache.Append(0, Gaussians(rng, 40 * 16), Gaussians(rng, 40 * 16), 40);
        Assert.Throws<InvalidOperationException>(() => cache.EndStatistics());
        cache.BeginStatistics(new AttentionStatisticsRequest(0));
        Assert.Throws<InvalidOperationException>(() => cache.BeginStatistics(new AttentionStatisticsRequest(0)));
        var e = Assert.Throws<InvalidOperationException>(() => cache.Evict(0, 0, new HashSet<int> { 3 }));
        Assert.Contains("statistics", e.Message);
        Assert.Throws<InvalidOperationException>(() => cache.Evict(0, 0, new bool[40]));
        Assert.Throws<InvalidOperationException>(() => cache.Truncate(10));
        Assert.Throws<InvalidOperationException>(() => cache.Requantize(0, 0, new bool[40], KvFormat.Int4, KvFormat.Int4));
        var stats = cache.EndStatistics();
        Assert.Equal(0, stats.QueryCount(0));
        Assert.All(stats.MaxProbability(0, 0).ToArray(), p => Assert.Equal(0f, p));
        cache.Truncate(10); // allowed again
        Assert.Equal(10, cache.Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.BeginStatistics(new AttentionStatisticsRequest(-1)));
    }

    /// <summary>A layer sharing another's KV covers the source's tokens: the same queries give it the source's statistics.</summary>
    [Fact]
    public void SharedLayer_CoversItsSourceTokens()
    {
        var rng = new Random(9);
        using var cache = new PagedKvCache(2, 4, 1, HeadDim, new PagedKvCacheOptions { KeyFormat = KvFormat.Int4, ValueFormat = KvFormat.F16, MaxTokens = 100 });
        for (int l = 0; l < 2; l++) cache.Append(l, Gaussians(rng, 50 * HeadDim), Gaussians(rng, 50 * HeadDim), 50);
        cache.ShareLayer(1, 0);
        cache.BeginStatistics(new AttentionStatisticsRequest(0, GroupFold.Max));
        Assert.Throws<InvalidOperationException>(() => cache.ShareLayer(1, 0));
        var q = Gaussians(rng, 3 * 4 * HeadDim, 2);
        var o = new float[q.Length];
        for (int l = 0; l < 2; l++) cache.Attend(l, q, 3, 47, o);
        var stats = cache.EndStatistics();
        Assert.Equal(Enumerable.Range(0, 50), stats.Positions(1, 0));
        Assert.True(stats.SumProbability(0, 0)[10] > 0);
        Assert.Equal(stats.MaxProbability(0, 0).ToArray(), stats.MaxProbability(1, 0).ToArray());
        Assert.Equal(stats.SumProbability(0, 0).ToArray(), stats.SumProbability(1, 0).ToArray());
        Assert.Equal(stats.KeyNorms(0, 0).ToArray(), stats.KeyNorms(1, 0).ToArray());
    }

    /// <summary>
    /// Through the transformer: prefill 30 tokens, collect over a 10-token chunk and 5 decode steps; the statistics
    /// equal those folded from the float64 reference transformer's softmax weights (F32 blocks, 8-token blocks).
    /// </summary>
    [Theory]
    [InlineData(GroupFold.Max)]
    [InlineData(GroupFold.Mean)]
    public void Transformer_StatisticsEqualReferenceSoftmaxWeights(GroupFold fold)
    {
        using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig("gqa2-halfsplit-tied"));
        var c = model.Config;
        int group = c.NumHeads / c.NumKvHeads;
        var tokens = ReferenceModels.RandomTokens(45, c.VocabSize);
        var engine = new Transformer(model.Weights) { PrefillChunk = 512 };
        using var cache = new PagedKvCache(c, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, BlockTokens = 8, MaxTokens = 64 });
        engine.Forward(tokens.AsSpan(0, 30), cache);
        cache.BeginStatistics(new AttentionStatisticsRequest(32, fold)); // positions 30 and 31 attend but are not counted
        engine.Forward(tokens.AsSpan(30, 10), cache);
        for (int t = 40; t < 45; t++) engine.Forward(tokens.AsSpan(t, 1), cache);
        var stats = cache.EndStatistics();

        // weights[layer][position][head] over positions 0..position.
        var weights = new double[c.NumLayers][][][];
        for (int l = 0; l < c.NumLayers; l++) weights[l] = Enumerable.Range(0, 45).Select(_ => new double[c.NumHeads][]).ToArray();
        var oracle = new ReferenceTransformer(c, ReferenceWeights.FromDictionary(model.Tensors))
        {
            AttentionWeights = (layer, position, head, w) => weights[layer][position][head] = w,
        };
        oracle.Forward(tokens);
        for (int l = 0; l < c.NumLayers; l++)
        {
            Assert.Equal(13, stats.QueryCount(l));
            for (int g = 0; g < c.NumKvHeads; g++)
            {
                var max = new double[30]; var sum = new double[30];
                for (int q = 32; q < 45; q++)
                    for (int t = 0; t < 30; t++)
                    {
                        var p = Enumerable.Range(g * group, group).Select(h => weights[l][q][h][t]);
                        double f = fold == GroupFold.Max ? p.Max() : p.Average();
                        max[t] = Math.Max(max[t], f); sum[t] += f;
                    }
                Assert.Equal(Enumerable.Range(0, 30), stats.Positions(l, g));
                AssertClose(max, stats.MaxProbability(l, g), 1e-4, $"layer {l}, head {g}, max");
                AssertClose(sum, stats.SumProbability(l, g), 1e-4, $"layer {l}, head {g}, sum");
                Assert.True(sum.Max() > 0.05, "the check needs non-trivial probabilities");
            }
        }
    }
}
