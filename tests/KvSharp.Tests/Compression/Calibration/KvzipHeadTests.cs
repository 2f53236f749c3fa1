using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Calibration;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Scorers;
using KvSharp.Tests.Reference;

namespace KvSharp.Tests.Compression.Calibration;

/// <summary>KVzip's calibrated head level: the profile file, the head budget's arithmetic, the press's real eviction and the scores against a float64 oracle.</summary>
public class KvzipHeadTests
{
    private const float Inf = float.PositiveInfinity;

    [Fact]
    public void ProfileFile_RoundTripsAndIgnoresProvenance()
    {
        using var dir = new TempDir();
        string path = Path.Combine(dir.Path, "heads.json");
        var profile = new HeadProfile("kvzip-heads", [[0.5, 0.25], [1.0 / 3, 2e-9], [0.9, 0.1]]);
        profile.Save(path, [("text", "\"essays\""), ("seed", "3")]);
        Assert.False(File.Exists(path + ".tmp"));
        var back = HeadProfile.Load(path, "kvzip-heads");
        Assert.Equal((3, 2), (back.Layers, back.KvHeads));
        Assert.Equal(1.0 / 3, back[1, 0]);
        Assert.Equal(2e-9, back[1, 1]);
        Assert.Equal([0.5f, 0.25f, (float)(1.0 / 3), 2e-9f, 0.9f, 0.1f], back.Flatten());
    }

    [Theory]
    [InlineData("{", "not valid JSON")]
    [InlineData("[1, 2]", "expected a JSON object")]
    [InlineData("{\"method\": \"baklava\", \"scores\": [[1]]}", "written by 'baklava', expected a 'kvzip-heads' profile")]
    [InlineData("{\"method\": \"kvzip-heads\"}", "no \"scores\" array")]
    [InlineData("{\"method\": \"kvzip-heads\", \"scores\": [[1, 2], [3]]}", "layer 1 has 1 KV heads, layer 0 has 2")]
    [InlineData("{\"method\": \"kvzip-heads\", \"scores\": [[1, \"x\"]]}", "scores[0][1] = \"x\" is not a finite number")]
    [InlineData("{\"method\": \"kvzip-heads\", \"layers\": 4, \"scores\": [[1, 2]]}", "\"layers\": 4 disagrees with the 1 in \"scores\"")]
    public void ProfileFile_MalformedIsRefusedNamingTheFile(string json, string problem)
    {
        var e = Assert.Throws<KvSharpException>(() => HeadProfile.Parse(json, "p.json", "kvzip-heads"));
        Assert.Contains("kvzip-heads profile 'p.json'", e.Message);
        Assert.Contains(problem, e.Message);
        Assert.Contains("file not found", Assert.Throws<KvSharpException>(() => HeadProfile.Load("/nonexistent/p.json", "kvzip-heads")).Message);
    }

    [Fact]
    public void HeadBudget_WithAProfile_PaysForcedTokensFirstThenWholeHeadsInProfileOrder()
    {
        // 4 heads of 10 candidates, each forcing 2 (a sink and a recent token). keep=0.5: B = 20; forced = 8.
        float[] Head() => [Inf, 1, 1, 1, 1, 1, 1, 1, 1, Inf];
        var s = Scores.Of(2, 2, Head(), Head(), Head(), Head());
        // Profile order 1, 3, 2, 0: head 1 whole (8 + 8 = 16 ≤ 20); head 3 would make 24 > 20: stop.
        Assert.Equal([2, 10, 2, 2], new HeadBudget(KeepTarget.Ratio(0.5), [0.1f, 0.9f, 0.5f, 0.7f]).Allocate(s));
        // total=24: heads 1 and 3 whole (8 + 8 + 8 = 24).
        Assert.Equal([2, 10, 2, 10], new HeadBudget(KeepTarget.Total(24), [0.1f, 0.9f, 0.5f, 0.7f]).Allocate(s));
        // Strict ranking: head 1 (20 candidates) does not fit in B = round(0.4 x 32) = 13 after 4 forced, so no head
        // becomes whole, even though head 3 (4 candidates) would fit.
        var uneven = Scores.Of(2, 2, [Inf, 0, 0, 0], [Inf, .. new float[19]], [Inf, 0, 0, 0], [Inf, 0, 0, 0]);
        Assert.Equal([1, 1, 1, 1], new HeadBudget(KeepTarget.Ratio(0.4), [0.1f, 0.9f, 0.5f, 0.7f]).Allocate(uneven));
    }

    [Fact]
    public void Press_KeepsSinksWindowAndTheBestHeadsWhole_AndFreesTheRest()
    {
        using var dir = new TempDir();
        using var data = new SyntheticCache(64);
        string path = Path.Combine(dir.Path, "heads.json");
        // 2 layers x 2 KV heads: layer 1 head 0 is the best head.
        new HeadProfile("kvzip-heads", [[0.2, 0.1], [0.9, 0.3]]).Save(path);
        var press = PressRegistry.Parse($"kvzip:level=head,keep=0.4,file={path},sinks=2,window=8");
        var head = Assert.IsType<KvzipHeadPress>(press);
        Assert.Equal($"kvzip+head:keep=0.4,file={path},sinks=2,window=8", press.Text);
        Assert.Equal(press.Text, PressRegistry.Parse(press.Text).Text);
        long before = data.Cache.PoolLiveBytes;
        // Candidates: 63 per head after the protected BOS. B = round(0.4 x 252) = 101; forced: sinks 1 + window 8 = 9 per head = 36;
        // the best head adds 54 → 90 ≤ 101; the next (0.3) would add 54 more: stop.
        press.Compress(data.Context(protectedPrefix: 1));
        Assert.Equal(64, data.Cache.Positions(1, 0).Count);
        foreach (var (l, h) in new[] { (0, 0), (0, 1), (1, 1) })
            Assert.Equal([0, 1, .. Enumerable.Range(56, 8)], data.Cache.Positions(l, h));
        // 4-token blocks: the whole head keeps 16 blocks, the others 1 + 2 of their 16.
        Assert.Equal(before * (16 + 3 * 3) / 64, data.Cache.PoolLiveBytes);
    }

    [Fact]
    public void Press_RefusesAProfileOfAnotherModelShape()
    {
        using var dir = new TempDir();
        using var data = new SyntheticCache(16);
        string path = Path.Combine(dir.Path, "heads.json");
        new HeadProfile("kvzip-heads", [[0.2, 0.1], [0.9, 0.3], [0.5, 0.5]]).Save(path);
        var press = PressRegistry.Parse($"kvzip:level=head,file={path}");
        var e = Assert.Throws<KvSharpException>(() => press.Compress(data.Context()));
        Assert.Contains($"'{path}': computed for 3 layers x 2 KV heads but the model has 2 layers x 2 KV heads", e.Message);
        Assert.Contains("file not found", Assert.Throws<KvSharpException>(() => PressRegistry.Parse("kvzip:level=head,file=/nonexistent.json")).Message);
    }

    [Fact]
    public void Calibration_ScoresAreTheMeanOverWindowsOfEachHeadsMaxPairScore_AsAFloat64Oracle()
    {
        using var m = new TinyAttentionModel();
        const int sinks = 2;
        int[][] windows = [ReferenceModels.RandomTokens(20, m.Config.VocabSize, seed: 3), ReferenceModels.RandomTokens(16, m.Config.VocabSize, seed: 4)];
        var profile = new KvzipHeadCalibration(sinks).Run(m.Engine, m.Tokenizer, null, windows);
        int[] run0 = [.. m.Tokenizer.Encode(KvzipScorer.FirstPrompt, false), .. m.Tokenizer.Encode("\n", false)];
        var expected = new double[m.Config.NumLayers, m.Config.NumKvHeads];
        foreach (var w in windows)
        {
            // One repeat run (the window is below a chunk): request + "\n" + the tokens after the sinks, after the window.
            int[] run = [.. run0, .. w[sinks..]];
            var p = m.OracleWeights([.. w, .. run]);
            for (int l = 0; l < m.Config.NumLayers; l++)
                for (int g = 0; g < m.Config.NumKvHeads; g++)
                {
                    double max = 0;
                    for (int q = w.Length; q < w.Length + run.Length; q++)
                        for (int h = g * m.Group; h < (g + 1) * m.Group; h++)
                            for (int t = sinks; t < w.Length; t++) max = Math.Max(max, p[l][q][h][t]);
                    expected[l, g] += max / windows.Length;
                }
        }
        for (int l = 0; l < m.Config.NumLayers; l++)
            for (int g = 0; g < m.Config.NumKvHeads; g++)
                Assert.True(Math.Abs(expected[l, g] - profile[l, g]) < 2e-4, $"layer {l} head {g}: expected {expected[l, g]}, got {profile[l, g]}");
    }
}
