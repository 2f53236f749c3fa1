using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Calibration;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Sharing;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Tests.Reference;

namespace KvSharp.Tests.Compression.Calibration;

/// <summary>KVSharer: the greedy search on a case with a known answer, the map file, the press's real savings and exactness.</summary>
public class KvSharerTests
{
    [Fact]
    public void Search_TriesMostDissimilarPairsFirst_KeepsThoseAboveTheThreshold_AndSkipsBlockedPairs()
    {
        // 1-D layer means 0, 10, 1, 11: distances (3,0) 11; (3,2) 10, (1,0) 10; (2,1) 9; (3,1) 1, (2,0) 1.
        double[][] means = [[0], [10], [1], [11]];
        var asked = new List<string>();
        double Similarity(IReadOnlyList<LayerShare> s)
        {
            asked.Add(string.Join(' ', s));
            return s.Contains(new LayerShare(3, 0)) ? 0.5 : 1 - 0.01 * s.Count;
        }
        var result = KvSharerSearch.Run(means, Similarity, threshold: 0.9, maxShared: 3);
        // (3,0) fails the threshold; (3,2) and (1,0) pass; (2,1): 2 is (3,2)'s source; (3,1): 3 already shares;
        // (2,0): 2 is a source.
        Assert.Equal([new LayerShare(3, 2), new LayerShare(1, 0)], result.Shares);
        Assert.Equal(["3<-0", "3<-2", "3<-2 1<-0"], asked);
        Assert.Equal([false, true, true], result.Trials.Select(t => t.Accepted));
        Assert.Equal([11.0, 10, 10], result.Trials.Select(t => t.Distance));
        // Stops at maxShared.
        Assert.Equal([new LayerShare(3, 2)], KvSharerSearch.Run(means, Similarity, 0.9, maxShared: 1).Shares);
    }

    [Fact]
    public void MapFile_RoundTrips_AndBadMapsAreRefusedNamingTheFile()
    {
        using var dir = new TempDir();
        string path = Path.Combine(dir.Path, "map.json");
        new KvSharerMap(8, [new(6, 0), new(7, 2)]).Save(path, [("threshold", "0.9")]);
        var back = KvSharerMap.Load(path);
        Assert.Equal(8, back.Layers);
        Assert.Equal([new LayerShare(6, 0), new LayerShare(7, 2)], back.Shares);
        string Bad(string json) => Assert.Throws<KvSharpException>(() => KvSharerMap.Parse(json, "m.json")).Message;
        Assert.Contains("kvsharer map 'm.json': share 2<-3 must have 0 ≤ source < layer < 8", Bad("{\"method\": \"kvsharer\", \"layers\": 8, \"shares\": [{\"layer\": 2, \"source\": 3}]}"));
        Assert.Contains("layer 5 is shared twice", Bad("{\"method\": \"kvsharer\", \"layers\": 8, \"shares\": [{\"layer\": 5, \"source\": 0}, {\"layer\": 5, \"source\": 1}]}"));
        Assert.Contains("reads layer 5, which itself stores nothing", Bad("{\"method\": \"kvsharer\", \"layers\": 8, \"shares\": [{\"layer\": 5, \"source\": 0}, {\"layer\": 6, \"source\": 5}]}"));
        Assert.Contains("expected \"method\": \"kvsharer\"", Bad("{\"method\": \"baklava\", \"layers\": 8, \"shares\": []}"));
        Assert.Contains("not valid JSON", Bad("{"));
        Assert.Contains("computed for 8 layers but the model has 2", Assert.Throws<KvSharpException>(() => back.CheckLayers(2, path)).Message);
    }

    private sealed class Prefilled : IDisposable
    {
        public Prefilled(int tokens = 40)
        {
            Model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig("gqa2-halfsplit-tied"), 5);
            Engine = new Transformer(Model.Weights);
            Tokens = ReferenceModels.RandomTokens(tokens, Model.Config.VocabSize, seed: 9);
            Cache = new PagedKvCache(Model.Config, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, BlockTokens = 8, MaxTokens = 128 });
            Engine.Forward(Tokens, Cache);
        }

        public RandomModel Model { get; }
        public Transformer Engine { get; }
        public int[] Tokens { get; }
        public PagedKvCache Cache { get; }

        public void Dispose() { Cache.Dispose(); Model.Dispose(); }
    }

    [Fact]
    public void Press_SharedLayersStoreNothing_MemoryDropsByTheirBytes()
    {
        using var dir = new TempDir();
        using var p = new Prefilled();
        string path = Path.Combine(dir.Path, "map.json");
        new KvSharerMap(2, [new(1, 0)]).Save(path);
        long layer1 = p.Cache.BytesByLayerHead(1, 0) + p.Cache.BytesByLayerHead(1, 1);
        long bytes = p.Cache.ByteCount, pool = p.Cache.PoolLiveBytes;
        var press = PressRegistry.Parse($"kvsharer:file={path}");
        Assert.Equal($"kvsharer:file={path}", press.Text);
        press.Compress(new PressContext(p.Engine, p.Cache, p.Tokens));
        Assert.Equal(0, p.Cache.SharedLayerSource(1));
        Assert.Equal(bytes - layer1, p.Cache.ByteCount);
        Assert.Equal(pool / 2, p.Cache.PoolLiveBytes); // two layers of equal size, one left
        Assert.Contains("layers=3 but the map", Assert.Throws<KvSharpException>(() => PressRegistry.Parse($"kvsharer:file={path},layers=3")).Message);
        Assert.Contains("needs file=PATH", Assert.Throws<KvSharpException>(() => PressRegistry.Parse("kvsharer")).Message);
    }

    [Fact]
    public void Press_WithAnIdentityMap_AnswersExactlyAsTheFullCache()
    {
        using var dir = new TempDir();
        using var p = new Prefilled();
        using var full = p.Cache.Fork();
        string path = Path.Combine(dir.Path, "map.json");
        new KvSharerMap(2, [new(1, 0)]).Save(path);
        var press = PressRegistry.Parse($"kvsharer:file={path},layers=0");
        press.Compress(new PressContext(p.Engine, p.Cache, p.Tokens));
        Assert.Equal(-1, p.Cache.SharedLayerSource(1));
        int[] question = ReferenceModels.RandomTokens(6, p.Model.Config.VocabSize, seed: 2);
        Assert.Equal(p.Engine.Forward(question, full, LogitsMode.All), p.Engine.Forward(question, p.Cache, LogitsMode.All));
    }

    [Fact]
    public void Calibration_SharedHiddenStatesAndTheirCosineMatchTheFloat64Oracle()
    {
        using var p = new Prefilled(16);
        var calibration = new KvSharerCalibration(p.Engine, [p.Tokens]);
        var shares = new Dictionary<int, int> { [1] = 0 };
        var weights = ReferenceWeights.FromDictionary(p.Model.Tensors);
        var unshared = new ReferenceTransformer(p.Model.Config, weights).FinalHidden(p.Tokens);
        var oracle = new ReferenceTransformer(p.Model.Config, weights) { KvSourceLayers = shares }.FinalHidden(p.Tokens);
        var shared = calibration.SharedHidden(p.Tokens, [new LayerShare(1, 0)]);
        int hidden = p.Model.Config.HiddenSize;
        Assert.Equal(p.Tokens.Length * hidden, shared.Length);
        for (int t = 0; t < p.Tokens.Length; t++)
            for (int i = 0; i < hidden; i++)
                Assert.True(Math.Abs(oracle[t][i] - shared[t * hidden + i]) < 1e-4, $"position {t} element {i}: {oracle[t][i]} vs {shared[t * hidden + i]}");
        // The acceptance score: per-position cosine of the final hidden states, averaged, all in float64.
        double expected = Enumerable.Range(0, p.Tokens.Length).Average(t => Cosine(unshared[t], oracle[t]));
        Assert.Equal(expected, calibration.Similarity([new LayerShare(1, 0)]), 5);
        Assert.True(expected < 1 - 1e-4, $"the share must change the output (cosine {expected})");
        Assert.Equal(1, calibration.Similarity([]), 9);
        Assert.Equal(2 * p.Model.Config.NumKvHeads * p.Model.Config.HeadDim, calibration.LayerMeans[0].Length);
    }

    [Fact]
    public void VectorSimilarityCosine_IsTheFloat64CosineOfTheVectors()
    {
        float[] a = [3, 4, 0], b = [4, 3, 5];
        Assert.Equal(24 / (5 * Math.Sqrt(50)), VectorSimilarity.Cosine(a, b), 12); // a·b = 24, |a| = 5, |b| = √50
        Assert.Equal(-1, VectorSimilarity.Cosine(a, [-6, -8, 0]), 12);
        Assert.Equal(1, VectorSimilarity.Cosine([0, 0], [0, 0]));
        Assert.Equal(0, VectorSimilarity.Cosine([0, 0], [1, 0]));
    }

    [Fact]
    public unsafe void Search_OnAModelWhoseLastLayerIgnoresItsAttention_SharesExactlyThatLayer()
    {
        // Four layers; the last one's attention output projection is zero, so what its attention reads cannot change
        // the output: any share 3 <- j leaves the final hidden states as they are (cosine 1), any other share
        // changes them. The greedy search must keep the first pair it tries for layer 3 and reject every other.
        var config = ReferenceModels.RandomConfig("gqa2-halfsplit-tied") with { NumLayers = 4 };
        using var model = ReferenceModels.CreateRandom(config, 3);
        var output = model.Weights.Require(TensorNames.Layer(3, TensorNames.Suffix.AttnOutput));
        Assert.Equal(GgmlType.F32, output.Type);
        new Span<byte>(output.Data, checked((int)output.ByteLength)).Clear();
        var calibration = new KvSharerCalibration(new Transformer(model.Weights), [ReferenceModels.RandomTokens(24, config.VocabSize, seed: 4)]);
        var result = calibration.Search(threshold: 0.999, maxShared: 3);
        Assert.Equal(3, Assert.Single(result.Shares).Layer);
        foreach (var trial in result.Trials)
        {
            bool ignored = trial.Share.Layer == 3;
            Assert.Equal(ignored, trial.Accepted);
            if (ignored) Assert.Equal(1, trial.Similarity, 6);
            else Assert.True(trial.Similarity < 0.999, $"{trial.Share}: {trial.Similarity}");
        }
        Assert.Contains(result.Trials, t => !t.Accepted);
    }

    private static double Cosine(double[] a, double[] b)
    {
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++) { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
        return ab / Math.Sqrt(aa * bb);
    }
}
