using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Decoding;
using KvSharp.Compression.Registry;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;

namespace KvSharp.Tests.Compression.Decoding;

/// <summary>
/// Decode-time presses (R-KV, H2O): the schedule holds the cache at its budget during a real generation, a budget that
/// covers everything changes nothing, and the scores of a compression step equal a float64 re-implementation.
/// </summary>
public class DecodePressTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    /// <summary>Wraps a decode press and records, after every step, the most candidates any head holds.</summary>
    private sealed class Watch(IDecodeCompression inner) : IDecodeCompression
    {
        public List<(int Step, int MaxCandidates)> Steps { get; } = [];
        public string Text => inner.Text;

        public IDecodeSession Start(IKvCache cache)
        {
            var session = inner.Start(cache);
            return new Session(session, (PagedKvCache)cache, this);
        }

        private sealed class Session(IDecodeSession inner, PagedKvCache cache, Watch watch) : IDecodeSession
        {
            public void BeforeStep(int step) => inner.BeforeStep(step);

            public void AfterStep(int step)
            {
                inner.AfterStep(step);
                int max = 0;
                for (int l = 0; l < cache.Layers; l++)
                    for (int h = 0; h < cache.KvHeads; h++) max = Math.Max(max, cache.Positions(l, h).Count(p => p >= 1));
                watch.Steps.Add((step, max));
            }

            public void Dispose() => inner.Dispose();
        }
    }

    private static (GenerationResult Result, long Bytes) Generate(string? press, int tokens, Watch? watch = null)
    {
        using var model = LanguageModel.Load(Stories);
        using var cache = model.CreateCache(512, KvCacheSpec.Parse("f32"));
        IDecodeCompression? decode = press == null ? null : DecodePressRegistry.Parse(press);
        if (watch != null) decode = watch;
        var options = new GenerationOptions { MaxTokens = tokens, Sampler = SamplerOptions.Greedy, StopAtEos = false, DecodeCompression = decode };
        var result = model.CreateGenerator().Generate(model.Encode("Once upon a time, there was a little girl"), cache, 512, options);
        return (result, cache.ByteCount);
    }

    [Theory]
    [InlineData("rkv:tokens=32,every=16")]
    [InlineData("h2o:tokens=32,every=4,window=8")]
    public void TheCacheStaysAtItsBudgetDuringALongGeneration(string press)
    {
        var parsed = DecodePressRegistry.Parse(press);
        var watch = new Watch(parsed);
        var (result, bytes) = Generate(press, 120, watch);
        var (_, fullBytes) = Generate(null, tokens: 120);
        Assert.Equal(120, result.TokenIds.Count);
        foreach (var (step, max) in watch.Steps)
        {
            Assert.True(max <= parsed.Tokens + parsed.Every - 1, $"step {step}: a head holds {max} candidates");
            if (step % parsed.Every == 0) Assert.True(max <= parsed.Tokens, $"step {step}: a head holds {max} candidates after a compression step");
        }
        Assert.Contains(watch.Steps, s => s.Step % parsed.Every == 0 && s.MaxCandidates == parsed.Tokens);
        Assert.True(bytes < fullBytes * 0.5, $"{bytes} bytes with {press} vs {fullBytes} without");
    }

    [Theory]
    [InlineData("rkv:tokens=512,every=8")]
    [InlineData("h2o:tokens=512")]
    public void ABudgetCoveringEverythingGivesTheSameGreedyOutput(string press)
    {
        var (with, _) = Generate(press, tokens: 80);
        var (without, _) = Generate(null, tokens: 80);
        Assert.Equal(without.TokenIds, with.TokenIds);
    }

    // --- scores of one compression step against float64 -------------------------------------------------------

    private const int Layers = 2, Heads = 4, KvHeads = 2, D = 8, Prompt = 20, Group = Heads / KvHeads;

    /// <summary>A paged cache driven like the transformer drives it: the prompt, then one random token per step.</summary>
    private sealed class Driver : IDisposable
    {
        private readonly Random _rng = new(17);

        public Driver()
        {
            Cache = new PagedKvCache(Layers, Heads, KvHeads, D, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, BlockTokens = 4, MaxTokens = 256 });
            for (int t = 0; t < Prompt; t++) Step();
        }

        public PagedKvCache Cache { get; }

        /// <summary>[layer][position] keys [KvHeads × D] and values, and queries [Heads × D].</summary>
        public List<double[]>[] K { get; } = [[], []];
        public List<double[]>[] Q { get; } = [[], []];

        public void Step()
        {
            int p = Cache.Length;
            for (int l = 0; l < Layers; l++)
            {
                // Spread-out scales make the scores differ clearly (no near-ties at the budget's edge).
                var k = Random(KvHeads * D, 1 + p % 5);
                var v = Random(KvHeads * D, 1);
                var q = Random(Heads * D, 1.5);
                Cache.Append(l, k, v, 1);
                var o = new float[Heads * D];
                Cache.Attend(l, q, 1, p, o);
                K[l].Add([.. k.Select(x => (double)x)]);
                Q[l].Add([.. q.Select(x => (double)x)]);
            }
        }

        private float[] Random(int n, double scale) => [.. Enumerable.Range(0, n).Select(_ => (float)((_rng.NextDouble() * 2 - 1) * scale))];

        /// <summary>Softmax weight the query at <paramref name="q"/> of query head h gives position t (over positions 0..q).</summary>
        public double Weight(int layer, int q, int h, int t)
        {
            int g = h / Group;
            var scores = Enumerable.Range(0, q + 1).Select(s => Dot(Q[layer][q].AsSpan(h * D, D), K[layer][s].AsSpan(g * D, D)) / Math.Sqrt(D)).ToArray();
            double max = scores.Max(), sum = scores.Sum(x => Math.Exp(x - max));
            return Math.Exp(scores[t] - max) / sum;
        }

        public double GroupMean(int layer, int q, int g, int t) => Enumerable.Range(g * Group, Group).Average(h => Weight(layer, q, h, t));

        public static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
        {
            double s = 0;
            for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
            return s;
        }

        public void Dispose() => Cache.Dispose();
    }

    private static void Run(Driver driver, IDecodeSession session, int steps)
    {
        for (int k = 1; k <= steps; k++)
        {
            session.BeforeStep(k);
            driver.Step();
            session.AfterStep(k);
        }
    }

    [Fact]
    public void H2o_ScoresAreTheAttentionSummedOverEveryGeneratedQuery()
    {
        const int every = 12, window = 4, tokens = 16;
        using var driver = new Driver();
        var press = new H2oDecodePress(tokens, every, window, protect: 1);
        using var session = (DecodePressSession)press.Start(driver.Cache);
        Run(driver, session, every);
        var scores = session.LastScores!;
        int length = Prompt + every;
        for (int l = 0; l < Layers; l++)
            for (int g = 0; g < KvHeads; g++)
            {
                Assert.Equal(length, scores[l, g].Length); // scored before eviction: every position
                var expected = new double[length];
                for (int q = Prompt; q < length; q++)
                    for (int t = 0; t < q; t++) expected[t] += driver.GroupMean(l, q, g, t); // a query's weight on itself is not counted
                for (int t = 0; t < length; t++)
                {
                    if (t >= length - window) Assert.True(float.IsPositiveInfinity(scores[l, g][t]), $"layer {l} head {g} position {t} is recent");
                    else Assert.True(Math.Abs(expected[t] - scores[l, g][t]) < 1e-5, $"layer {l} head {g} position {t}: {expected[t]} vs {scores[l, g][t]}");
                }
                AssertKeptTheTop(driver.Cache.Positions(l, g), [.. scores[l, g].Select(s => (double)s)], tokens, protect: 1);
            }
    }

    [Fact]
    public void Rkv_ScoresAreImportanceOfTheLastWindowMinusRedundancy()
    {
        const int every = 12, window = 4, kernel = 3, tokens = 16;
        const double lambda = 0.3, threshold = 0.1; // a larger λ than the default, so importance matters in the check
        using var driver = new Driver();
        var press = new RkvDecodePress(tokens, every, window, kernel, lambda, threshold, protect: 1);
        using var session = (DecodePressSession)press.Start(driver.Cache);
        Run(driver, session, every);
        var scores = session.LastScores!;
        int length = Prompt + every, observedFrom = length - window;
        for (int l = 0; l < Layers; l++)
            for (int g = 0; g < KvHeads; g++)
            {
                // Importance: the window's queries, over the tokens stored before the window, group mean, max-pooled with zero padding.
                var importance = new double[observedFrom];
                for (int q = observedFrom; q < length; q++)
                    for (int t = 0; t < observedFrom; t++) importance[t] += driver.GroupMean(l, q, g, t);
                var pooled = new double[observedFrom];
                for (int t = 0; t < observedFrom; t++)
                    pooled[t] = Enumerable.Range(t - kernel / 2, kernel).Max(j => j >= 0 && j < observedFrom ? importance[j] : 0);
                // Redundancy: cosine to later keys above the threshold, summed / (n − 1), softmaxed over the head.
                var unit = Enumerable.Range(0, length).Select(t =>
                {
                    var k = driver.K[l][t].AsSpan(g * D, D).ToArray();
                    double n = Math.Sqrt(Driver.Dot(k, k));
                    return k.Select(x => x / n).ToArray();
                }).ToArray();
                var raw = new double[length];
                for (int j = 0; j < length; j++)
                    for (int i = j + 1; i < length; i++)
                    {
                        double c = Driver.Dot(unit[i], unit[j]);
                        if (c > threshold) raw[j] += c / (length - 1);
                    }
                double rmax = raw.Max(), rsum = raw.Sum(r => Math.Exp(r - rmax));
                for (int t = 0; t < length; t++)
                {
                    if (t >= observedFrom) { Assert.True(float.IsPositiveInfinity(scores[l, g][t]), $"window position {t} is kept"); continue; }
                    double expected = lambda * pooled[t] - (1 - lambda) * Math.Exp(raw[t] - rmax) / rsum;
                    Assert.True(Math.Abs(expected - scores[l, g][t]) < 1e-5, $"layer {l} head {g} position {t}: {expected} vs {scores[l, g][t]}");
                }
                AssertKeptTheTop(driver.Cache.Positions(l, g), [.. scores[l, g].Select(s => (double)s)], tokens, protect: 1);
            }
    }

    /// <summary>
    /// The CPU cache presented as a cache that keeps H2O's running sums itself, the way the device does (CudaPagedKvCache.RunningSums):
    /// per head in storage order (ascending here), a new token's sum 0, each step's covered sums added, the cut made from the
    /// stored index of the first candidate and of the window's first position by a full sort (score descending, then the later
    /// token; every +∞ kept), the sums compacted with the eviction. A reference for the seam, written apart from TopK and the session.
    /// </summary>
    private sealed class SumsKeepingCache(PagedKvCache cache) : IDecodeCache, IRunningAttentionSums
    {
        private readonly PagedDecodeCache _inner = new(cache);
        private List<double>[] _sums = [];

        public int Layers => _inner.Layers;
        public int KvHeads => _inner.KvHeads;
        public int HeadDim => _inner.HeadDim;
        public int Length => _inner.Length;
        public int SharedLayerSource(int layer) => _inner.SharedLayerSource(layer);
        public ReadOnlySpan<int> Positions(int layer, int kvHead) => _inner.Positions(layer, kvHead);
        public void BeginStatistics(AttentionStatisticsRequest request) => _inner.BeginStatistics(request);
        public ObservedAttention EndStatistics() => throw new InvalidOperationException("the session must not read statistics back when the cache keeps its sums");
        public float[][] RawRedundancy(double threshold) => _inner.RawRedundancy(threshold);
        public void Evict(IReadOnlyList<bool[]?> evict) => throw new InvalidOperationException("the session must not cut on the host when the cache keeps its sums");

        public IRunningAttentionSums? StartRunningSums()
        {
            _sums = [.. Enumerable.Range(0, Layers * KvHeads).Select(_ => new List<double>())];
            return this;
        }

        public void EndStatisticsIntoSums()
        {
            if (FailEndingIntoSums) throw new InvalidOperationException("a failed launch");
            var stats = _inner.EndStatistics();
            for (int h = 0; h < _sums.Length; h++)
            {
                var stored = Positions(h / KvHeads, h % KvHeads);
                while (_sums[h].Count < stored.Length) _sums[h].Add(0); // appended tokens start at 0
                var covered = stats.Positions(h / KvHeads, h % KvHeads);
                var add = stats.SumProbability(h / KvHeads, h % KvHeads);
                for (int c = 0; c < covered.Length; c++)
                {
                    Assert.Equal(stored[c], covered[c]); // the covered tokens are the first stored
                    _sums[h][c] += add[c];
                }
            }
        }

        public (long Evicted, Func<HeadScores> Scores) EvictBySums(int tokens, int protect, int recent)
        {
            var scores = new HeadScores(Layers, KvHeads);
            var drops = new bool[_sums.Length][];
            long evicted = 0;
            for (int h = 0; h < _sums.Length; h++)
            {
                var stored = Positions(h / KvHeads, h % KvHeads).ToArray();
                while (_sums[h].Count < stored.Length) _sums[h].Add(0);
                int first = stored.Count(p => p < protect), window = stored.Count(p => p < recent);
                var s = Enumerable.Range(0, stored.Length).Select(i => i >= window ? float.PositiveInfinity : (float)_sums[h][i]).ToArray();
                scores[h / KvHeads, h % KvHeads] = s;
                var kept = new HashSet<int>(Enumerable.Range(0, first));
                var ranked = Enumerable.Range(first, stored.Length - first).OrderByDescending(i => s[i]).ThenByDescending(i => i).ToArray();
                kept.UnionWith(ranked.Length > tokens ? ranked.Take(tokens) : ranked);
                kept.UnionWith(Enumerable.Range(0, s.Length).Where(i => float.IsPositiveInfinity(s[i])));
                drops[h] = [.. Enumerable.Range(0, s.Length).Select(i => !kept.Contains(i))];
                evicted += drops[h].Count(d => d);
                _sums[h] = [.. Enumerable.Range(0, s.Length).Where(kept.Contains).Select(i => _sums[h][i])];
            }
            _inner.Evict(drops);
            return (evicted, () => scores);
        }

        /// <summary>How many times the session stopped the sums.</summary>
        public int Stops { get; private set; }

        /// <summary>Ending a collection into the sums throws (a failed device launch).</summary>
        public bool FailEndingIntoSums { get; init; }

        public void Stop()
        {
            _sums = [];
            Stops++;
        }
    }

    [Theory]
    [InlineData(1, 4, 1)]
    [InlineData(3, 0, 0)]
    [InlineData(5, 6, 2)]
    public void H2o_OverACacheKeepingItsSumsKeepsWhatTheHostSessionKeeps(int every, int window, int protect)
    {
        const int tokens = 14, steps = 24;
        using var host = new Driver();
        using var kept = new Driver(); // the same random stream: the same tokens while the kept sets agree
        var press = new H2oDecodePress(tokens, every, window, protect);
        using var hostSession = (DecodePressSession)press.Start(host.Cache);
        using var keptSession = press.CreateSession(new SumsKeepingCache(kept.Cache));
        for (int k = 1; k <= steps; k++)
        {
            hostSession.BeforeStep(k);
            keptSession.BeforeStep(k);
            host.Step();
            kept.Step();
            hostSession.AfterStep(k);
            keptSession.AfterStep(k);
            for (int l = 0; l < Layers; l++)
                for (int g = 0; g < KvHeads; g++)
                    Assert.Equal(host.Cache.Positions(l, g), kept.Cache.Positions(l, g));
            Assert.Equal(hostSession.Compressions, keptSession.Compressions);
            Assert.Equal(hostSession.EvictedTokens, keptSession.EvictedTokens);
            if (hostSession.LastScores is { } expected)
                for (int h = 0; h < expected.HeadCount; h++) Assert.Equal(expected[h], keptSession.LastScores![h]);
        }
        Assert.True(hostSession.Compressions >= steps / every - 1, $"{hostSession.Compressions} compressions in {steps} steps");
        Assert.True(hostSession.EvictedTokens > 0);
    }

    /// <summary>
    /// A session disposed while the step it observes is open (the step threw) ends the collection through the cache's sums,
    /// without reading the statistics back, and stops the sums; it stops them too when ending the collection throws, so the
    /// cache is not left keeping sums (the device cache then refuses re-quantization, restores and another session's sums).
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void H2o_DisposedMidStepOverACacheKeepingItsSumsStopsTheSums(bool endingFails)
    {
        using var driver = new Driver();
        var cache = new SumsKeepingCache(driver.Cache) { FailEndingIntoSums = endingFails };
        var session = new H2oDecodePress(tokens: 14, every: 1, window: 4, protect: 1).CreateSession(cache);
        session.BeforeStep(1);
        driver.Step();
        if (endingFails) Assert.Equal("a failed launch", Assert.Throws<InvalidOperationException>(session.Dispose).Message);
        else
        {
            session.Dispose();
            Assert.False(driver.Cache.IsCollectingStatistics);
        }
        Assert.Equal(1, cache.Stops);
    }

    /// <summary>After the step the head holds the protected prefix plus its <paramref name="tokens"/> best candidates.</summary>
    private static void AssertKeptTheTop(IReadOnlyList<int> kept, double[] scores, int tokens, int protect)
    {
        var best = Enumerable.Range(protect, scores.Length - protect).OrderByDescending(t => scores[t]).Take(tokens);
        Assert.Equal([.. Enumerable.Range(0, protect), .. best.Order()], kept);
    }

    [Fact]
    public void TextFormsParseBackAndBadOnesNameTheProblem()
    {
        foreach (var text in new[] { "rkv", "rkv:tokens=512,every=64", "h2o:tokens=256,window=16,protect=0", "r-kv:lambda=0.1" })
        {
            var press = DecodePressRegistry.Parse(text);
            Assert.Equal(press.Text, DecodePressRegistry.Parse(press.Text).Text);
        }
        Assert.Equal("rkv:tokens=1024,every=128,window=8,kernel=7,lambda=0.07,threshold=0.5,protect=1", DecodePressRegistry.Parse("rkv").Text);
        Assert.Contains("decode presses: rkv, h2o", Assert.Throws<KvSharpException>(() => DecodePressRegistry.Parse("snapkv:tokens=3")).Message);
        Assert.Contains("valid parameters: every, protect, tokens, window", Assert.Throws<KvSharpException>(() => DecodePressRegistry.Parse("h2o:keep=0.5")).Message);
        Assert.Contains("tokens=0 must be an integer in [1, ∞]", Assert.Throws<KvSharpException>(() => DecodePressRegistry.Parse("rkv:tokens=0")).Message);
        Assert.Contains("kernel must be odd", Assert.Throws<KvSharpException>(() => DecodePressRegistry.Parse("rkv:kernel=4")).Message);
    }

    [Fact]
    public void ACacheThatCannotEvictIsRefusedWithAClearMessage()
    {
        using var cache = new FullPrecisionKvCache(layers: 1, heads: 2, kvHeads: 1, headDim: 8, maxTokens: 8);
        Assert.Contains("needs the paged KV cache", Assert.Throws<KvSharpException>(() => DecodePressRegistry.Parse("rkv").Start(cache)).Message);
    }
}
