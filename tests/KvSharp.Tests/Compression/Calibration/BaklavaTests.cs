using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Calibration;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Registry;
using KvSharp.Models;
using KvSharp.Tests.Reference;

namespace KvSharp.Tests.Compression.Calibration;

/// <summary>BaKlaVa: the allocation arithmetic by hand, the profile's 1 − cos accumulation, the file through the press.</summary>
public class BaklavaTests
{
    private const float Inf = float.PositiveInfinity;

    private static BaklavaBudget Budget(KeepTarget target, double[] importance, double floor = 0.2, double power = 1) =>
        new(target, new HeadProfile("baklava", importance.Chunk(importance.Length / 2).Select(r => (IReadOnlyList<double>)r).ToArray()), "b.json", floor, power);

    [Fact]
    public void Allocation_FloorsThenSharesByImportanceTimesSize()
    {
        // 4 heads of 10 candidates, keep 0.5: B = 20, C = 5, floors ⌊0.2 × 5⌋ = 1 each → R = 16.
        var s = Scores.Of(2, 2, Scores.Ramp(10), Scores.Ramp(10), Scores.Ramp(10), Scores.Ramp(10));
        // weights 1, 2, 1, 0 (× 10): shares 4, 8, 4, 0 → 5, 9, 5, 1.
        Assert.Equal([5, 9, 5, 1], Budget(KeepTarget.Ratio(0.5), [1, 2, 1, 0]).Allocate(s));
        // power 0: uniform, 1 + 4 each.
        Assert.Equal([5, 5, 5, 5], Budget(KeepTarget.Ratio(0.5), [1, 2, 1, 0], power: 0).Allocate(s));
        // power 2: weights 1, 4, 1, 0 → 16 × (1/6, 4/6, 1/6) = 2.67, 10.67, 2.67: head 1 caps at 10 (9 more);
        // the rest 7 split 3.5 / 3.5 → floors 3, 3, one left to the larger fraction, tie → head 0: 1+4, 10, 1+3, 1.
        Assert.Equal([5, 10, 4, 1], Budget(KeepTarget.Ratio(0.5), [1, 2, 1, 0], power: 2).Allocate(s));
    }

    [Fact]
    public void Allocation_ForcedTokensAndSizesCount()
    {
        // Head 0: 4 candidates, 3 forced; head 1: 8; head 2: 8; head 3: 0. keep 0.5: B = 10; floors: 3 (forced), ⌊0.2 × 4⌋ = 0, 0, 0.
        var s = Scores.Of(2, 2, [Inf, Inf, Inf, 1], Scores.Ramp(8), Scores.Ramp(8), []);
        // R = 7 over weights 1 × 4, 1 × 8, 2 × 8 = 4, 8, 16 (sum 28): 1, 2, 4.
        Assert.Equal([4, 2, 4, 0], Budget(KeepTarget.Ratio(0.5), [1, 1, 2, 5], floor: 0.2).Allocate(s));
        // total=100 exceeds every candidate: each head keeps all it has.
        Assert.Equal([4, 8, 8, 0], Budget(KeepTarget.Total(100), [1, 1, 2, 5]).Allocate(s));
    }

    [Fact]
    public void Allocation_RefusesAProfileOfAnotherShape()
    {
        var s = Scores.Of(1, 2, Scores.Ramp(4), Scores.Ramp(4));
        var e = Assert.Throws<KvSharpException>(() => Budget(KeepTarget.Ratio(0.5), [1, 2, 3, 4]).Allocate(s));
        Assert.Contains("baklava profile 'b.json': computed for 2 layers x 2 KV heads but the model has 1 layers x 2 KV heads", e.Message);
    }

    [Fact]
    public void Profile_AccumulatesOneMinusCosineOfOwnValueAndHeadOutput()
    {
        // 1 layer, 2 query heads sharing 1 KV head, head dim 2.
        var a = new BaklavaProfiler.Accumulator(layers: 1, heads: 2, kvHeads: 1, headDim: 2);
        a.OnAppend(0, new float[4], [1, 0, 1, 1], 2);
        // token 0: v = (1, 0); outputs (1, 0) → 0 and (0, 3) → 1. token 1: v = (1, 1); outputs (−1, −1) → 2 and (2, 2) → 0.
        a.OnAttend(0, new float[8], 2, 0, [1, 0, 0, 3, -1, -1, 2, 2]);
        Assert.Equal(0.75, a.Profile()[0, 0], 12);
    }

    [Fact]
    public void Profiling_LeavesTheForwardPassUnchanged_AndGivesOneImportancePerKvHead()
    {
        using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig("gqa2-halfsplit-tied"), 5);
        var engine = new Transformer(model.Weights);
        var tokens = ReferenceModels.RandomTokens(12, model.Config.VocabSize);
        var options = new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = 16 };
        using var plain = new PagedKvCache(model.Config, options);
        using var inner = new PagedKvCache(model.Config, options);
        var accumulator = new BaklavaProfiler.Accumulator(model.Config.NumLayers, model.Config.NumHeads, model.Config.NumKvHeads, model.Config.HeadDim);
        Assert.Equal(engine.Forward(tokens, plain, LogitsMode.All), engine.Forward(tokens, accumulator.Observe(inner), LogitsMode.All));
        var profile = BaklavaProfiler.Run(engine, [tokens]);
        Assert.Equal((2, 2), (profile.Layers, profile.KvHeads));
        Assert.Equal(accumulator.Profile().Flatten(), profile.Flatten());
        Assert.All(profile.Flatten(), x => Assert.InRange(x, 1e-6, 2));
    }

    [Fact]
    public void Press_ReadsTheFileAndKeepsEachHeadsBudget()
    {
        using var dir = new TempDir();
        using var data = new SyntheticCache(21);
        string path = Path.Combine(dir.Path, "baklava.json");
        new HeadProfile("baklava", [[0.1, 0.3], [0.2, 0.2]]).Save(path);
        var press = PressRegistry.Parse($"baklava(keynorm):keep=0.5,file={path}");
        Assert.Equal($"keynorm+baklava:keep=0.5,file={path},floor=0.2,power=1", press.Text);
        Assert.Equal(press.Text, PressRegistry.Parse(press.Text).Text);
        // 20 candidates per head after BOS: B = 40, floors ⌊0.2 × 10⌋ = 2 → R = 32 over weights 1, 3, 2, 2 (/8): 4, 12, 8, 8.
        press.Compress(data.Context(protectedPrefix: 1));
        Assert.Equal([1 + 6, 1 + 14, 1 + 10, 1 + 10], new[] { (0, 0), (0, 1), (1, 0), (1, 1) }.Select(x => data.Cache.Positions(x.Item1, x.Item2).Count));
        Assert.Contains("needs file=PATH", Assert.Throws<KvSharpException>(() => PressRegistry.Parse("baklava(snapkv):keep=0.3")).Message);
        Assert.Contains("written by 'baklava', expected a 'kvzip-heads' profile",
            Assert.Throws<KvSharpException>(() => PressRegistry.Parse($"kvzip:level=head,file={path}")).Message);
        Assert.IsType<ScoredPress>(press);
    }
}
