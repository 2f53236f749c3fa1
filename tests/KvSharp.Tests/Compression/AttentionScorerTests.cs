using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression;
using KvSharp.Compression.Scorers;
using KvSharp.Generation.Chat;
using KvSharp.Models;
using KvSharp.Tests.Reference;
using KvSharp.Tokenization;

namespace KvSharp.Tests.Compression;

/// <summary>
/// Attention-based scorers against the float64 oracle: its softmax weights for every (layer, query, head), folded and
/// accumulated here as each method defines, compared with what the scorer computed over an F32 paged cache.
/// </summary>
public class AttentionScorerTests
{
    private const int T = 24;
    private const double Tolerance = 2e-4;

    private sealed class Setup : IDisposable
    {
        private readonly TinyAttentionModel _tiny;

        public Setup(string config = "gqa2-halfsplit-tied", int seed = 5)
        {
            _tiny = new TinyAttentionModel(config, seed);
            Cache = new PagedKvCache(Config, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, BlockTokens = 4, MaxTokens = 256 });
            Tokens = ReferenceModels.RandomTokens(T, Config.VocabSize, seed: 11);
            Engine.Forward(Tokens, Cache);
        }

        public RandomModel Model => _tiny.Model;
        public Transformer Engine => _tiny.Engine;
        public ITokenizer Tokenizer => _tiny.Tokenizer;
        public PagedKvCache Cache { get; }
        public int[] Tokens { get; }
        public ModelConfig Config => _tiny.Config;
        public int Group => _tiny.Group;

        /// <summary>The oracle's softmax weights [layer][query position][query head] over <paramref name="tokens"/>.</summary>
        public double[][][][] OracleWeights(int[] tokens) => _tiny.OracleWeights(tokens);

        public PressContext Context(IReadOnlyList<int>? question = null, int protectedPrefix = 0) =>
            new(Engine, Cache, Tokens) { Question = question, ProtectedPrefix = protectedPrefix, Tokenizer = Tokenizer };

        /// <summary>Mean (or max) over the query heads of KV head g of the weight query q gives token t.</summary>
        public double Fold(double[][][][] w, int layer, int q, int g, int t, bool max)
        {
            double acc = 0;
            for (int h = g * Group; h < (g + 1) * Group; h++) acc = max ? Math.Max(acc, w[layer][q][h][t]) : acc + w[layer][q][h][t] / Group;
            return acc;
        }

        public void Dispose() { Cache.Dispose(); _tiny.Dispose(); }
    }

    private static void AssertScores(Func<int, int, int, double> expected, HeadScores actual, ModelConfig c, int count)
    {
        for (int l = 0; l < c.NumLayers; l++)
            for (int g = 0; g < c.NumKvHeads; g++)
            {
                Assert.Equal(count, actual[l, g].Length);
                for (int t = 0; t < count; t++)
                {
                    double e = expected(l, g, t);
                    if (double.IsPositiveInfinity(e)) Assert.True(float.IsPositiveInfinity(actual[l, g][t]), $"layer {l} head {g} token {t} must be forced");
                    else Assert.True(Math.Abs(e - actual[l, g][t]) <= Tolerance, $"layer {l} head {g} token {t}: expected {e}, got {actual[l, g][t]}");
                }
            }
    }

    [Theory]
    [InlineData("avg")]
    [InlineData("max")]
    public void SnapKv_SumsTheWindowsGroupMeanAttentionAndPools(string pool)
    {
        using var s = new Setup();
        const int window = 6, kernel = 3;
        var w = s.OracleWeights(s.Tokens);
        var actual = new SnapKvScorer(window, kernel, pool).Score(s.Context());
        AssertScores((l, g, t) =>
        {
            if (t >= T - window) return double.PositiveInfinity;
            double Raw(int u) => u < 0 || u >= T - window ? 0 : Enumerable.Range(T - window, window).Sum(q => s.Fold(w, l, q, g, u, max: false));
            var around = Enumerable.Range(t - kernel / 2, kernel).Select(Raw).ToArray();
            return pool == "avg" ? around.Sum() / kernel : around.Max();
        }, actual, s.Config, T);
    }

    [Fact]
    public void SnapKv_QueryAware_ObservesTheQuestion()
    {
        using var s = new Setup("gqa4-interleaved-tied");
        var question = ReferenceModels.RandomTokens(5, s.Config.VocabSize, seed: 3);
        var w = s.OracleWeights([.. s.Tokens, .. question]);
        var actual = new SnapKvScorer(window: 32, kernel: 1).Score(s.Context(question));
        AssertScores((l, g, t) => Enumerable.Range(T, 5).Sum(q => s.Fold(w, l, q, g, t, max: false)), actual, s.Config, T);
    }

    [Fact]
    public void Tova_IsTheLastQuerysGroupMeanAttention()
    {
        using var s = new Setup();
        var w = s.OracleWeights(s.Tokens);
        var actual = new TovaScorer().Score(s.Context());
        AssertScores((l, g, t) => t == T - 1 ? double.PositiveInfinity : s.Fold(w, l, T - 1, g, t, max: false), actual, s.Config, T);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public void H2o_SumsEveryLaterQuerysAttention_ByChunk(int chunk)
    {
        using var s = new Setup();
        const int window = 3;
        var w = s.OracleWeights(s.Tokens);
        var actual = new H2oScorer(window, chunk).Score(s.Context());
        // A query observes the tokens before its chunk's start.
        AssertScores((l, g, t) => t >= T - window ? double.PositiveInfinity
            : Enumerable.Range(0, T).Where(q => q / chunk * chunk > t).Sum(q => s.Fold(w, l, q, g, t, max: false)), actual, s.Config, T);
    }

    [Fact]
    public void Kvzip_IsTheMaxAttentionOfEachChunksRepeatRun()
    {
        using var s = new Setup();
        const int prefix = 2, chunk = 11; // two runs, the second quoting the first's last 8 tokens
        var tok = s.Tokenizer;
        var expected = new double[s.Config.NumLayers, s.Config.NumKvHeads, T];
        for (int start = prefix; start < T; start += chunk)
        {
            int end = Math.Min(T, start + chunk);
            int[] request = start == prefix
                ? tok.Encode("\n\nRepeat the previous context exactly.", false)
                : [.. tok.Encode("\n\nRepeat the part of the previous context exactly, starting with ", false), .. s.Tokens[Math.Max(prefix, start - 8)..start]];
            int[] run = [.. request, .. tok.Encode("\n", false), .. s.Tokens[start..end]];
            var w = s.OracleWeights([.. s.Tokens, .. run]);
            for (int l = 0; l < s.Config.NumLayers; l++)
                for (int g = 0; g < s.Config.NumKvHeads; g++)
                    for (int t = start; t < end; t++)
                        expected[l, g, t] = Enumerable.Range(T, run.Length).Max(q => s.Fold(w, l, q, g, t, max: true));
        }
        var actual = new KvzipScorer(chunk).Score(s.Context(protectedPrefix: prefix));
        AssertScores((l, g, t) => expected[l, g, t], actual, s.Config, T);
    }

    [Fact]
    public void KvzipPlus_WeighsEachAttentionWeightByTheValuesOutputNormOverTheHiddenNorm()
    {
        using var s = new Setup();
        const int prefix = 2, chunk = 11;
        var c = s.Config;
        int hd = c.HeadDim, qDim = c.NumHeads * hd;
        var tok = s.Tokenizer;
        var expected = new double[c.NumLayers, c.NumKvHeads, T];
        for (int start = prefix; start < T; start += chunk)
        {
            int end = Math.Min(T, start + chunk);
            int[] request = start == prefix
                ? tok.Encode("\n\nRepeat the previous context exactly.", false)
                : [.. tok.Encode("\n\nRepeat the part of the previous context exactly, starting with ", false), .. s.Tokens[Math.Max(prefix, start - 8)..start]];
            int[] run = [.. request, .. tok.Encode("\n", false), .. s.Tokens[start..end]];
            int[] all = [.. s.Tokens, .. run];
            var w = new double[c.NumLayers][][][];
            var x = new double[c.NumLayers][][];
            var v = new double[c.NumLayers][][];
            for (int l = 0; l < c.NumLayers; l++) { w[l] = new double[all.Length][][]; for (int t = 0; t < all.Length; t++) w[l][t] = new double[c.NumHeads][]; }
            var oracle = new ReferenceTransformer(c, ReferenceWeights.FromDictionary(s.Model.Tensors))
            {
                AttentionWeights = (l, t, h, p) => w[l][t][h] = p,
                AttentionInputs = (l, residual, values) => { x[l] = [.. residual.Select(r => r.ToArray())]; v[l] = values; },
            };
            oracle.Forward(all);
            for (int l = 0; l < c.NumLayers; l++)
            {
                var wo = s.Model.Tensors[TensorNames.Layer(l, TensorNames.Suffix.AttnOutput)]; // [hidden, heads × hd]
                for (int g = 0; g < c.NumKvHeads; g++)
                    for (int t = start; t < end; t++)
                        for (int h = g * s.Group; h < (g + 1) * s.Group; h++)
                        {
                            // ‖W_o^h v_t‖: the head's columns of W_o applied to the token's value.
                            double norm2 = 0;
                            for (int r = 0; r < c.HiddenSize; r++)
                            {
                                double acc = 0;
                                for (int j = 0; j < hd; j++) acc += wo[r * qDim + h * hd + j] * v[l][t][g * hd + j];
                                norm2 += acc * acc;
                            }
                            for (int q = T; q < all.Length; q++)
                            {
                                double hidden = Math.Sqrt(x[l][q].Sum(e => e * e));
                                expected[l, g, t] = Math.Max(expected[l, g, t], w[l][q][h][t] * Math.Sqrt(norm2) / hidden);
                            }
                        }
            }
        }
        var actual = new KvzipScorer(chunk, plus: true).Score(s.Context(protectedPrefix: prefix));
        AssertScores((l, g, t) => expected[l, g, t], actual, s.Config, T);
        Assert.Equal("kvzip:chunk=11,plus=true", new KvzipScorer(chunk, plus: true).Text);
    }

    [Fact]
    public void Kvzip_OneChunkCoveringTheContextEqualsUnchunked()
    {
        using var s = new Setup();
        var whole = new KvzipScorer(T - 1).Score(s.Context(protectedPrefix: 1));
        var unchunked = new KvzipScorer(100_000).Score(s.Context(protectedPrefix: 1));
        for (int i = 0; i < whole.HeadCount; i++) Assert.Equal(unchunked[i], whole[i]);
    }

    [Fact]
    public void Kvzip_ClosesTheRequestWithTheChatTemplatesTurn()
    {
        Assert.Equal("<|im_end|>\n<|im_start|>assistant\n", KvzipScorer.TurnSuffix(new ChatMlTemplate()));
        Assert.Equal("\n", KvzipScorer.TurnSuffix(null));
    }

    [Fact]
    public void Kvzip_ShrinksItsChunkToFitTheCachesPositions()
    {
        using var s = new Setup();
        var tok = s.Tokenizer;
        int overhead = tok.Encode("\n\nRepeat the part of the previous context exactly, starting with ", false).Length + 8 + 1;
        // Room for chunks of 5 tokens after the 24-token context: every context token is still scored (no zeros left).
        using var tight = new PagedKvCache(s.Config, s.Cache.Options with { MaxTokens = T + overhead + 5 });
        s.Engine.Forward(s.Tokens, tight);
        var scores = new KvzipScorer(2000).Score(new PressContext(s.Engine, tight, s.Tokens) { Tokenizer = tok, ProtectedPrefix = 1 });
        Assert.All(Enumerable.Range(0, scores.HeadCount), i => Assert.All(scores[i][1..], x => Assert.True(x > 0)));
        using var full = new PagedKvCache(s.Config, s.Cache.Options with { MaxTokens = T + 1 });
        s.Engine.Forward(s.Tokens, full);
        var e = Assert.Throws<KvSharpException>(() => new KvzipScorer().Score(new PressContext(s.Engine, full, s.Tokens) { Tokenizer = tok }));
        Assert.Contains("no room", e.Message);
    }

    [Fact]
    public void KvCompress_RanksBlocksBySquaredGroupSummedWindowAttention()
    {
        using var s = new Setup();
        const int window = 3, block = 4;
        var w = s.OracleWeights(s.Tokens);
        var actual = new KvCompressScorer(window, block).Score(s.Context());
        // A window query observes the tokens stored before it (its own run starts at its position).
        double Metric(int l, int g, int t) => Enumerable.Range(T - window, window).Where(q => q > t).Sum(q => Math.Pow(s.Fold(w, l, q, g, t, max: false) * s.Group, 2));
        AssertScores((l, g, t) => t >= T - window ? double.PositiveInfinity
            : Enumerable.Range(t / block * block, block).Sum(u => Metric(l, g, u)), actual, s.Config, T);
    }

    [Fact]
    public void ZipVl_DividesAccumulatedAttentionByItsObservers()
    {
        using var s = new Setup();
        const int chunk = 4;
        var w = s.OracleWeights(s.Tokens);
        var actual = new ZipVlScorer(chunk).Score(s.Context());
        AssertScores((l, g, t) =>
        {
            var observers = Enumerable.Range(0, T).Where(q => q / chunk * chunk > t).ToList();
            return observers.Count == 0 ? double.PositiveInfinity : observers.Sum(q => s.Fold(w, l, q, g, t, max: false)) / observers.Count;
        }, actual, s.Config, T);
    }

    [Fact]
    public void Rkv_RedundancyIsTheSoftmaxOfThresholdedSimilarityToLaterKeys()
    {
        var rng = new Random(4);
        const int n = 9, d = 8;
        var keys = new float[n * d];
        for (int i = 0; i < keys.Length; i++) keys[i] = rng.NextSingle() * 2 - 1;
        keys.AsSpan(0, d).CopyTo(keys.AsSpan(5 * d, d)); // token 0 duplicated later: redundant
        double Cos(int i, int j)
        {
            double dot = 0, a = 0, b = 0;
            for (int c = 0; c < d; c++) { dot += keys[i * d + c] * keys[j * d + c]; a += keys[i * d + c] * keys[i * d + c]; b += keys[j * d + c] * keys[j * d + c]; }
            return dot / Math.Sqrt(a * b);
        }
        var raw = Enumerable.Range(0, n).Select(j => Enumerable.Range(j + 1, n - j - 1).Select(i => Cos(i, j)).Where(c => c > 0.3).Sum() / (n - 1)).ToArray();
        var expected = raw.Select(r => Math.Exp(r) / raw.Sum(x => Math.Exp(x))).ToArray();
        var actual = RkvScorer.Redundancy(keys, d, 0.3);
        for (int j = 0; j < n; j++) Assert.Equal(expected[j], actual[j], 1e-5);
        Assert.True(actual[0] > actual[5]); // of the identical pair, only the older one is redundant
    }
}
