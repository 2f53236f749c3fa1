using KvSharp.Cache.Blocks;
using KvSharp.Compression.Quantization;

namespace KvSharp.Tests.Compression.Quantization;

public class KvTunerTests
{
    private static readonly IReadOnlyList<KvTunerPair> Pairs = KvTunerPair.Candidates;

    [Fact]
    public void PairNamesParse()
    {
        Assert.Equal(["KV8", "K8V4", "KV4", "K4V2", "KV2", "K4V8", "K2V4", "K8V2"], Pairs.Select(p => p.ToString()));
        Assert.Equal(new KvTunerPair(8, 4), KvTunerPair.TryParse("k8v4"));
        Assert.Equal(new KvTunerPair(4, 4), KvTunerPair.TryParse("K4V4"));
        Assert.Null(KvTunerPair.TryParse("K3V3"));
        Assert.Equal(3, new KvTunerPair(4, 2).MeanBits);
    }

    [Fact]
    public void ConfigFileRoundTripsAndRequantizesEachLayer()
    {
        using var dir = new TempDir();
        string path = Path.Combine(dir.Path, "kvtuner.json");
        File.WriteAllText(path, "{\"layers\": [\"K8V4\", {\"key_bits\": 2, \"value_bits\": 2}], \"loss\": 0.1}");
        var config = KvTunerConfig.Load(path);
        Assert.Equal([new KvTunerPair(8, 4), new KvTunerPair(2, 2)], config.Layers);
        Assert.Equal(4, config.MeanBits);
        Assert.Equal(config.Layers, KvTunerConfig.Parse(config.ToJson(), "x").Layers);

        using var data = new SyntheticCache(64, KvFormat.F32, blockTokens: 32);
        new KvTunerPress(path).Compress(data.Context());
        for (int h = 0; h < data.Cache.KvHeads; h++)
        {
            var l0 = data.Cache.BytesByFormat(0, h);
            var l1 = data.Cache.BytesByFormat(1, h);
            Assert.Equal([KvFormat.Int8, KvFormat.Int4], l0.Keys.Order());
            Assert.Equal([KvFormat.Int2], l1.Keys);
        }
    }

    [Theory]
    [InlineData("{\"layers\": [\"KV8\", \"K3V3\"]}", "layers[1]", "K3V3")]
    [InlineData("{\"layers\": [\"KV8\", {\"key_bits\": 2, \"value_bits\": 8}]}", "layers[1]")]
    [InlineData("{\"layer\": []}", "\"layers\" array")]
    [InlineData("{\"layers\": []}", "empty")]
    [InlineData("{\"layers\": [", "not valid JSON")]
    public void BadFilesAreRefusedNamingFileAndEntry(string json, params string[] fragments)
    {
        using var dir = new TempDir();
        string path = Path.Combine(dir.Path, "bad.json");
        File.WriteAllText(path, json);
        var e = Assert.Throws<KvSharpException>(() => KvTunerConfig.Load(path));
        Assert.Contains(path, e.Message);
        foreach (var f in fragments) Assert.Contains(f, e.Message);
    }

    [Fact]
    public void WrongLayerCountIsRefused()
    {
        using var dir = new TempDir();
        string path = Path.Combine(dir.Path, "three.json");
        File.WriteAllText(path, "{\"layers\": [\"KV8\", \"KV4\", \"KV2\"]}");
        using var data = new SyntheticCache(8, KvFormat.F32);
        var e = Assert.Throws<KvSharpException>(() => new KvTunerPress(path).Compress(data.Context()));
        Assert.Contains(path, e.Message);
        Assert.Contains("3 layer entries but the model has 2 layers", e.Message);
    }

    /// <summary>A separable profile: layer l's loss at a pair is w_l·(2^-kb + 0.5·2^-vb), keys weigh more than values.</summary>
    private static double[][] Profile(double[] weights) =>
        weights.Select(w => Pairs.Select(p => w * (Math.Pow(2, -p.KeyBits) + 0.5 * Math.Pow(2, -p.ValueBits))).ToArray()).ToArray();

    /// <summary>Exhaustive float64 optimum: least loss over all 8^layers configurations within the budget.</summary>
    private static (double Loss, double Bits) BruteForce(double[][] s, double budget)
    {
        int layers = s.Length;
        double best = double.PositiveInfinity, bestBits = 0;
        var idx = new int[layers];
        while (true)
        {
            double loss = 0, bits = 0;
            for (int l = 0; l < layers; l++) { loss += s[l][idx[l]]; bits += Pairs[idx[l]].MeanBits; }
            bits /= layers;
            if (bits <= budget + 1e-12 && (loss < best - 1e-15 || (Math.Abs(loss - best) <= 1e-15 && bits < bestBits))) { best = loss; bestBits = bits; }
            int k = 0;
            while (k < layers && ++idx[k] == Pairs.Count) idx[k++] = 0;
            if (k == layers) break;
        }
        return (best, bestBits);
    }

    [Theory]
    [InlineData(4.0)]
    [InlineData(3.25)]
    [InlineData(2.5)]
    public void SearchFindsTheKnownOptimumOfASeparableProfile(double budget)
    {
        var s = Profile([10, 0.1, 3, 0.5, 1, 6]);
        var (loss, bits) = BruteForce(s, budget);
        var result = KvTunerSearch.Run(s, new KvTunerSearchOptions { Budget = budget, Groups = 6, Population = 64, Generations = 150, Seed = 7 });
        Assert.Equal(loss, result.Chosen.Loss, 12);
        Assert.Equal(bits, result.Chosen.MeanBits, 12);
        Assert.True(result.Front.All(f => f.MeanBits <= budget + 1e-12));
        // The front is non-dominated: loss falls as bits rise.
        for (int i = 1; i < result.Front.Count; i++)
            Assert.True(result.Front[i].Loss < result.Front[i - 1].Loss, $"{result.Front[i - 1]} / {result.Front[i]}: {string.Join(",", result.Front[i - 1].Layers)} / {string.Join(",", result.Front[i].Layers)}");
    }

    [Fact]
    public void SearchIsDeterministicWithASeed()
    {
        var s = Profile([5, 0.2, 2, 0.7, 1, 3, 0.05, 8]);
        var o = new KvTunerSearchOptions { Budget = 3.5, Groups = 4, Population = 32, Generations = 40, Seed = 3 };
        var a = KvTunerSearch.Run(s, o);
        var b = KvTunerSearch.Run(s, o);
        Assert.Equal(a.Front.Select(f => string.Join(',', f.Layers)), b.Front.Select(f => string.Join(',', f.Layers)));
        Assert.Equal(4, a.Groups.Count);
        Assert.Equal(Enumerable.Range(0, 8), a.Groups.SelectMany(g => g).Order());
    }

    [Fact]
    public void PruningDropsDominatedPairsAndClusteringGroupsAlikeLayers()
    {
        // With keys weighing more, K2V4 (3 bits) loses to K4V2 (3 bits) and K4V8 (6 bits) to KV8? no: to K8V4 (6 bits).
        var s = Profile([1]);
        var kept = KvTunerSearch.Prune(s[0]).Select(i => Pairs[i].ToString()).ToList();
        Assert.DoesNotContain("K2V4", kept);
        Assert.DoesNotContain("K4V8", kept);
        Assert.Contains("K4V2", kept);
        Assert.Contains("K8V4", kept);
        // Two scales of profile: the 100x layers go together, the 1x layers together.
        var groups = KvTunerSearch.Cluster(Profile([1, 100, 1.1, 120, 0.9]), Enumerable.Repeat(Enumerable.Range(0, 8).ToArray(), 5).ToArray(), 2);
        Assert.Equal([[0, 2, 4], [1, 3]], groups);
    }
}
