using System.Diagnostics;
using KvSharp.Models;
using Xunit.Abstractions;

namespace KvSharp.Tests.Reference;

/// <summary>
/// Validates the oracle itself against independent data: llama.cpp's and transformers' logits on real
/// trained models, and hand-computed logits of tiny hand-built models.
/// </summary>
public sealed class ReferenceTransformerTests(ITestOutputHelper output)
{
    private static readonly Lazy<Func<string, double[]?>> Stories260KWeights = new(() =>
    {
        using var w = TestModelFiles.LoadGgufLlama(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        return ReferenceWeights.FromModelWeights(w);
    });

    private static readonly Lazy<ReferenceTransformer> Stories260K = new(() =>
    {
        using var w = TestModelFiles.LoadGgufLlama(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        return new ReferenceTransformer(w.Config, Stories260KWeights.Value);
    });

    private static readonly Lazy<ReferenceTransformer> Needle16M = new(() =>
    {
        using var w = TestModelFiles.LoadHfSafetensors(RepoPaths.SharedFile("models", "kvsharp-needle-16m"));
        return ReferenceTransformer.FromModelWeights(w);
    });

    private static readonly Lazy<IReadOnlyList<ReferenceOutput>> LlamaCpp =
        new(() => ReferenceOutput.Load(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json")));

    private static readonly Lazy<IReadOnlyList<ReferenceOutput>> Transformers =
        new(() => ReferenceOutput.Load(RepoPaths.SharedFile("reference", "kvsharp-needle-16m.transformers.json")));

    // ---------------------------------------------------------------- real models vs independent engines

    /// <summary>
    /// stories260K (GGUF, F32, interleaved RoPE, GQA 2, tied) against llama.cpp: top-20 logits of 8 steps within
    /// 2e-3 relative (measured worst 1.6e-3), the top-20 sets, and all 200 greedy steps.
    /// Why not tighter: llama.cpp ran with its default F16 KV cache and flash attention (f16 q/k/v, f16 value
    /// accumulator), whose rounding the oracle does not have: it even gives two different values, 17.797604 and
    /// 17.797935, for the same sequence position ([1, 403, 407, 261, 378]) depending on whether it came from
    /// prefill or decode. The engine in <see cref="KvSharp.Compute.Cpu.CpuNumerics.LlamaCpp"/> reproduces those logits bit
    /// for bit with ggml's float32 arithmetic (Models/EngineExactnessTests).
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Stories260K_MatchesLlamaCpp(int prompt)
    {
        var model = Stories260K.Value;
        Assert.Equal(RopeStyle.Interleaved, model.Config.RopeStyle);
        Assert.True(model.Config.TieEmbeddings);
        CheckAgainst(model, LlamaCpp.Value[prompt], tol: 2e-3, top20Steps: 8, greedySteps: 200);
    }

    /// <summary>
    /// kvsharp-needle-16m (sharded bf16 safetensors, half-split RoPE theta 1e5, GQA 3, tied) against transformers
    /// float32: top-20 logits of 8 steps within 1e-5 relative (observed &lt;= 2e-6: the same bf16 weights, float32 math),
    /// the top-20 sets, and every greedy step (40, or 8).
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Needle16M_MatchesTransformers(int prompt)
    {
        var model = Needle16M.Value;
        Assert.Equal(RopeStyle.HalfSplit, model.Config.RopeStyle);
        Assert.Equal(100000.0, model.Config.RopeTheta);
        var r = Transformers.Value[prompt];
        CheckAgainst(model, r, tol: 1e-5, top20Steps: r.Top20.Length, greedySteps: r.GreedyIds.Length);
    }

    /// <summary>
    /// Runs the oracle once on prompt + greedy continuation (teacher forcing: the logits at the position of
    /// step s are the ones greedy decoding saw at step s) and compares the reference's top-20 logits and argmaxes.
    /// The allowed error is <paramref name="tol"/> times |expected logit| (at least 1).
    /// </summary>
    private void CheckAgainst(ReferenceTransformer model, ReferenceOutput r, double tol, int top20Steps, int greedySteps)
    {
        var sw = Stopwatch.StartNew();
        var seq = r.PromptIds.Concat(r.GreedyIds.Take(greedySteps - 1)).ToArray();
        var logits = model.Forward(seq);
        output.WriteLine($"'{r.Prompt[..Math.Min(40, r.Prompt.Length)]}': {seq.Length} tokens in {sw.ElapsedMilliseconds} ms");

        double worst = 0;
        for (int step = 0; step < top20Steps; step++)
        {
            var row = logits[r.PromptIds.Length - 1 + step];
            foreach (var (token, expected) in r.Top20[step])
            {
                double rel = Math.Abs(row[token] - expected) / Math.Max(1.0, Math.Abs(expected));
                worst = Math.Max(worst, rel);
                Assert.True(rel <= tol, $"step {step} token {token}: oracle {row[token]:R}, reference {expected:R} (relative error {rel:E2})");
            }
            // The reference's top-20 must be the oracle's top-20 too (ties at the cut aside).
            double cut = r.Top20[step][^1].Logit;
            int above = row.Count(v => v > cut + tol * Math.Max(1, Math.Abs(cut)));
            Assert.True(above < 20, $"step {step}: {above} oracle logits exceed the reference's 20th logit {cut}");
        }
        output.WriteLine($"  worst relative top-20 logit error {worst:E2}");

        int ties = 0;
        for (int step = 0; step < greedySteps; step++)
        {
            var row = logits[r.PromptIds.Length - 1 + step];
            int best = ArgMax(row), expected = r.GreedyIds[step];
            if (best == expected) continue;
            // The reference's lower precision may legitimately pick the other side of a near-tie.
            double gap = row[best] - row[expected];
            Assert.True(gap <= tol * Math.Max(1, Math.Abs(row[best])),
                $"greedy step {step}: oracle argmax {best} ({row[best]:R}) but reference chose {expected} ({row[expected]:R})");
            ties++;
        }
        output.WriteLine($"  {greedySteps} greedy steps agree ({ties} near-ties)");
    }

    private static int ArgMax(double[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    // ---------------------------------------------------------------- hand-computed models

    /// <summary>
    /// 1 layer, 1 head, head dim = hidden = 2, vocab 2, eps 0, all projections identity, FFN width 1 with
    /// gate = [1, 0], up = [0, 1], down = [1, 0]^T, untied identity output. Tokens: A = [1, 1], B = [1, -1]
    /// (both already unit RMS). Sequence [A, B]; phi = the rotation angle of position 1 (= inv_freq_0).
    ///
    /// Position 0: h = [1, 1]; attends only itself, so attn = v0 = [1, 1]; x = [2, 2]; ffn_norm([2,2]) = [1, 1],
    ///   g = 1, u = 1, ffn = [silu(1), 0]; x = [2 + silu(1), 2]; logits = x / rms(x).
    /// Position 1: q1 = k1 = v1 = [1, -1]; rotated by phi: q1 = [cos + sin, sin - cos]; k0 = [1, 1] (position 0).
    ///   s10 = q1.k0 / sqrt 2 = 2 sin / sqrt 2 = sqrt2 sin phi;  s11 = |q1|^2 / sqrt 2 = sqrt 2.
    ///   w0 = e^s10 / (e^s10 + e^s11), w1 = 1 - w0; attn = w0 [1,1] + w1 [1,-1] = [1, w0 - w1];
    ///   x = [2, m] with m = w0 - w1 - 1; ffn_norm: n = x / rms(x); ffn = [silu(n0) n1, 0];
    ///   x = [2 + silu(n0) n1, m]; logits = x / rms(x).
    /// With head dim 2 both RoPE styles pair (0, 1), so they must agree; the angle tests the frequency.
    /// </summary>
    [Theory]
    [InlineData(RopeStyle.Interleaved, 0.0, 1.0)]
    [InlineData(RopeStyle.HalfSplit, 0.0, 1.0)]
    // llama3 (factor 2, low 1, high 2, original 4): wavelength 2 pi > 4/1 → f = 1/2.
    [InlineData(RopeStyle.HalfSplit, 4.0, 0.5)]
    // llama3 (factor 2, low 1, high 4, original 8): 8/4 = 2 <= 2 pi <= 8/1 = 8 → smooth = (8/(2 pi) - 1)/3
    // = 0.0910798482450543, f = (1 - smooth)/2 + smooth = 0.5455399241225272.
    [InlineData(RopeStyle.Interleaved, 8.0, 0.5455399241225272)]
    public void HandModel_HeadDim2_MatchesHandComputedLogits(RopeStyle style, double scalingOriginal, double phi)
    {
        Llama3RopeScaling? scaling = scalingOriginal switch
        {
            4.0 => new Llama3RopeScaling(Factor: 2, LowFreqFactor: 1, HighFreqFactor: 2, OriginalMaxPositions: 4),
            8.0 => new Llama3RopeScaling(Factor: 2, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 8),
            _ => null,
        };
        var config = HandConfig(hidden: 2, headDim: 2, vocab: 2, style) with { RopeScaling = scaling, TieEmbeddings = false };
        var w = new Dictionary<string, double[]>
        {
            [TensorNames.TokenEmbedding] = [1, 1, 1, -1],
            [TensorNames.OutputNorm] = [1, 1],
            [TensorNames.Output] = Identity(2),
            [L(TensorNames.Suffix.AttnNorm)] = [1, 1],
            [L(TensorNames.Suffix.Q)] = Identity(2),
            [L(TensorNames.Suffix.K)] = Identity(2),
            [L(TensorNames.Suffix.V)] = Identity(2),
            [L(TensorNames.Suffix.AttnOutput)] = Identity(2),
            [L(TensorNames.Suffix.FfnNorm)] = [1, 1],
            [L(TensorNames.Suffix.FfnGate)] = [1, 0],
            [L(TensorNames.Suffix.FfnUp)] = [0, 1],
            [L(TensorNames.Suffix.FfnDown)] = [1, 0],
        };
        var logits = new ReferenceTransformer(config, ReferenceWeights.FromDictionary(w)).Forward([0, 1]);

        static double Silu(double x) => x / (1 + Math.Exp(-x));
        static double[] UnitRms(double a, double b) { double r = Math.Sqrt((a * a + b * b) / 2); return [a / r, b / r]; }

        var expected0 = UnitRms(2 + Silu(1), 2);
        double s10 = Math.Sqrt(2) * Math.Sin(phi), s11 = Math.Sqrt(2);
        double w0 = Math.Exp(s10) / (Math.Exp(s10) + Math.Exp(s11)), w1 = 1 - w0;
        double m = w0 - w1 - 1;
        var n = UnitRms(2, m);
        var expected1 = UnitRms(2 + Silu(n[0]) * n[1], m);

        AssertClose(expected0, logits[0], 1e-12);
        AssertClose(expected1, logits[1], 1e-12);
    }

    /// <summary>
    /// Distinguishes the pairing conventions. 1 layer, 1 head, head dim = hidden = 4, theta 1e4 (inv_freq = [1, 0.01]),
    /// identity projections, FFN silenced (down = 0), identity output over vocab 4, eps 0.
    /// Tokens A = [0, 2, 0, 0], B = [2, 0, 0, 0] (unit RMS). Sequence [A, B].
    /// Position 0: attn = v0 = A; x = 2A = [0, 4, 0, 0]; logits = x / rms = [0, 2, 0, 0].
    /// Position 1: q1 = B rotated by angle 1 on its pair containing dim 0:
    ///   interleaved pair (0, 1): q1 = [2c, 2s, 0, 0] → s10 = q1.A / sqrt 4 = 4s / 2 = 2 sin 1;
    ///   half-split pair (0, 2):  q1 = [2c, 0, 2s, 0] → s10 = 0.
    ///   s11 = |B|^2 / 2 = 2 in both. attn = w0 A + w1 B = [2 w1, 2 w0, 0, 0]; x = [2 + 2 w1, 2 w0, 0, 0]; logits = x / rms(x).
    /// </summary>
    [Theory]
    [InlineData(RopeStyle.Interleaved)]
    [InlineData(RopeStyle.HalfSplit)]
    public void HandModel_HeadDim4_PairsDimensionsByStyle(RopeStyle style)
    {
        var config = HandConfig(hidden: 4, headDim: 4, vocab: 4, style) with { TieEmbeddings = true };
        var w = new Dictionary<string, double[]>
        {
            [TensorNames.TokenEmbedding] = [0, 2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [TensorNames.OutputNorm] = [1, 1, 1, 1],
            [L(TensorNames.Suffix.AttnNorm)] = [1, 1, 1, 1],
            [L(TensorNames.Suffix.Q)] = Identity(4),
            [L(TensorNames.Suffix.K)] = Identity(4),
            [L(TensorNames.Suffix.V)] = Identity(4),
            [L(TensorNames.Suffix.AttnOutput)] = Identity(4),
            [L(TensorNames.Suffix.FfnNorm)] = [1, 1, 1, 1],
            [L(TensorNames.Suffix.FfnGate)] = [1, 0, 0, 0],
            [L(TensorNames.Suffix.FfnUp)] = [1, 0, 0, 0],
            [L(TensorNames.Suffix.FfnDown)] = [0, 0, 0, 0],
        };
        // Tied: the output projection is the embedding [[0,2,0,0],[2,0,0,0],0,0], so logit i = E_i . normed x.
        var logits = new ReferenceTransformer(config, ReferenceWeights.FromDictionary(w)).Forward([0, 1]);

        // Position 0: normed x = [0, 2, 0, 0] → logits = [E0.x, E1.x, 0, 0] = [4, 0, 0, 0].
        AssertClose([4, 0, 0, 0], logits[0], 1e-12);

        double s10 = style == RopeStyle.Interleaved ? 2 * Math.Sin(1) : 0, s11 = 2;
        double w0 = Math.Exp(s10) / (Math.Exp(s10) + Math.Exp(s11)), w1 = 1 - w0;
        double a = 2 + 2 * w1, b = 2 * w0, r = Math.Sqrt((a * a + b * b) / 4);
        // normed x = [a/r, b/r, 0, 0] → logits [E0.x, E1.x, 0, 0] = [2b/r, 2a/r, 0, 0].
        AssertClose([2 * b / r, 2 * a / r, 0, 0], logits[1], 1e-12);
    }

    /// <summary>
    /// Qwen2 biases and Qwen3 per-head q/k RMSNorm (applied before RoPE). 1 layer, 1 head, head dim = hidden = 2,
    /// theta irrelevant (inv_freq_0 = 1, so position 1 rotates by 1 rad), eps 0, FFN silenced, identity output.
    /// Wq = 3 I, bq = [0, 3]; Wk = I, bk = [1, -1]; Wv = I, bv = [0, 1]; q_norm = [2, 1]; k_norm = [1, 1].
    /// Tokens A = [1, 1], B = [1, -1]; sequence [A, B].
    /// Position 0: v0 = A + bv = [1, 2]; attn = v0; x = [2, 3]; logits = x / sqrt(13/2).
    /// Position 1: q1 = 3B + bq = [3, 0] → rms 3/sqrt2 → [sqrt2, 0] * [2, 1] = [2 sqrt2, 0] → rotated [2 sqrt2 c, 2 sqrt2 s].
    ///   k0 = A + bk = [2, 0] → [sqrt2, 0] (position 0, unrotated). k1 = B + bk = [2, -2] → [1, -1] → rotated [c + s, s - c].
    ///   s10 = q1.k0 / sqrt2 = 4c / sqrt2 = 2 sqrt2 c; s11 = q1.k1 / sqrt2 = 2 (c^2 + cs + s^2 - sc) = 2.
    ///   v1 = B + bv = [1, 0]; attn = w0 [1, 2] + w1 [1, 0] = [1, 2 w0]; x = [2, 2 w0 - 1]; logits = x / rms(x).
    /// (Normalizing after the rotation would give q1 = [2 sqrt2 c, sqrt2 s] and a different s10.)
    /// </summary>
    [Fact]
    public void HandModel_BiasAndQkNorm_MatchHandComputedLogits()
    {
        var config = HandConfig(hidden: 2, headDim: 2, vocab: 2, RopeStyle.HalfSplit) with
        {
            AttentionBias = true,
            QkNorm = true,
            TieEmbeddings = false,
        };
        var w = new Dictionary<string, double[]>
        {
            [TensorNames.TokenEmbedding] = [1, 1, 1, -1],
            [TensorNames.OutputNorm] = [1, 1],
            [TensorNames.Output] = Identity(2),
            [L(TensorNames.Suffix.AttnNorm)] = [1, 1],
            [L(TensorNames.Suffix.Q)] = [3, 0, 0, 3],
            [L(TensorNames.Suffix.QBias)] = [0, 3],
            [L(TensorNames.Suffix.K)] = Identity(2),
            [L(TensorNames.Suffix.KBias)] = [1, -1],
            [L(TensorNames.Suffix.V)] = Identity(2),
            [L(TensorNames.Suffix.VBias)] = [0, 1],
            [L(TensorNames.Suffix.QNorm)] = [2, 1],
            [L(TensorNames.Suffix.KNorm)] = [1, 1],
            [L(TensorNames.Suffix.AttnOutput)] = Identity(2),
            [L(TensorNames.Suffix.FfnNorm)] = [1, 1],
            [L(TensorNames.Suffix.FfnGate)] = [1, 0],
            [L(TensorNames.Suffix.FfnUp)] = [1, 0],
            [L(TensorNames.Suffix.FfnDown)] = [0, 0],
        };
        var logits = new ReferenceTransformer(config, ReferenceWeights.FromDictionary(w)).Forward([0, 1]);

        double r0 = Math.Sqrt(13.0 / 2);
        AssertClose([2 / r0, 3 / r0], logits[0], 1e-12);

        double s10 = 2 * Math.Sqrt(2) * Math.Cos(1), s11 = 2;
        double w0 = Math.Exp(s10) / (Math.Exp(s10) + Math.Exp(s11));
        double b = 2 * w0 - 1, r1 = Math.Sqrt((4 + b * b) / 2);
        AssertClose([2 / r1, b / r1], logits[1], 1e-12);
    }

    /// <summary>
    /// RoPE on [1, 2, 3, 4] with inv_freq [1, 0.01] at position p (angles p and 0.01 p):
    /// interleaved rotates (x0, x1) = (1, 2) by p and (x2, x3) = (3, 4) by 0.01 p;
    /// half-split rotates (x0, x2) = (1, 3) by p and (x1, x3) = (2, 4) by 0.01 p; (a, b) → (a cos - b sin, a sin + b cos).
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void ApplyRope_RotatesTheConventionsPairs(int p)
    {
        double c = Math.Cos(p), s = Math.Sin(p), c2 = Math.Cos(0.01 * p), s2 = Math.Sin(0.01 * p);
        double[] inter = [1, 2, 3, 4];
        ReferenceTransformer.ApplyRope(inter, p, [1, 0.01], RopeStyle.Interleaved);
        AssertClose([c - 2 * s, s + 2 * c, 3 * c2 - 4 * s2, 3 * s2 + 4 * c2], inter, 1e-15);

        double[] half = [1, 2, 3, 4];
        ReferenceTransformer.ApplyRope(half, p, [1, 0.01], RopeStyle.HalfSplit);
        AssertClose([c - 3 * s, 2 * c2 - 4 * s2, s + 3 * c, 2 * s2 + 4 * c2], half, 1e-15);
    }

    /// <summary>
    /// theta 1e4, d 8: f = [1, 0.1, 0.01, 0.001], wavelengths 2 pi / f = [6.28, 62.8, 628, 6283].
    /// llama3 factor 8, low 1, high 4, original 64: low-frequency wavelength 64, high-frequency wavelength 16.
    /// f0: 6.28 &lt; 16 → kept, 1. f2, f3: > 64 → divided by 8: 0.00125, 0.000125.
    /// f1: 16 &lt;= 62.8 &lt;= 64 → smooth = (64 / 62.83 - 1) / 3 = (6.4 / (2 pi) - 1) / 3 = 0.0061972119293767,
    ///   f = (1 - smooth) 0.1 / 8 + smooth 0.1 = 0.0125 + 0.0875 smooth = 0.0130422560438205.
    /// </summary>
    [Fact]
    public void InverseFrequencies_FollowTheLlama3Rule()
    {
        var plain = HandConfig(hidden: 8, headDim: 8, vocab: 2, RopeStyle.HalfSplit);
        AssertClose([1, 0.1, 0.01, 0.001], ReferenceTransformer.InverseFrequencies(plain), 1e-15);

        var scaled = plain with { RopeScaling = new Llama3RopeScaling(8, 1, 4, 64) };
        AssertClose([1, 0.0130422560438205, 0.00125, 0.000125], ReferenceTransformer.InverseFrequencies(scaled), 1e-15);
    }

    private static ModelConfig HandConfig(int hidden, int headDim, int vocab, RopeStyle style) => new()
    {
        Architecture = "hand",
        VocabSize = vocab,
        HiddenSize = hidden,
        IntermediateSize = 1,
        NumLayers = 1,
        NumHeads = 1,
        NumKvHeads = 1,
        HeadDim = headDim,
        RmsNormEps = 0,
        RopeTheta = 10000,
        RopeStyle = style,
    };

    private static string L(string suffix) => TensorNames.Layer(0, suffix);

    private static double[] Identity(int n)
    {
        var m = new double[n * n];
        for (int i = 0; i < n; i++) m[i * n + i] = 1;
        return m;
    }

    internal static void AssertClose(double[] expected, double[] actual, double tol)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tol, $"[{i}]: expected {expected[i]:R}, got {actual[i]:R}");
    }
}
