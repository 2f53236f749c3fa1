using Xunit.Abstractions;

namespace KvSharp.Tests.Reference;

/// <summary>
/// <see cref="LlamaCppEmulation"/> (ggml's float32 CPU arithmetic, replayed in the tests) against llama.cpp's recorded
/// stories260K outputs, and the pieces of <see cref="GgmlCpu"/> against hand-computed values and their documented bounds.
/// </summary>
public sealed class LlamaCppEmulationTests(ITestOutputHelper output)
{
    private static readonly Lazy<LlamaCppEmulation> Stories260K = new(() =>
    {
        using var w = TestModelFiles.LoadGgufLlama(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        return new LlamaCppEmulation(w.Config, ReferenceWeights.FromModelWeights(w));
    });

    private static readonly Lazy<IReadOnlyList<ReferenceOutput>> LlamaCpp =
        new(() => ReferenceOutput.Load(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json")));

    /// <summary>
    /// Issue 2, 8(a): the prompt is decoded as one batch, then 200 greedy tokens one at a time, as llama.cpp did. Every
    /// greedy id equals llama.cpp's, and every recorded top-20 logit of the 8 recorded steps agrees within 1e-6 relative
    /// (|ours − llama.cpp| ≤ 1e-6 · max(1, |llama.cpp|); the file keeps 8 significant digits, and parsed to float each
    /// value is bit-identical to ours). The same top-20 tokens in the same order.
    /// </summary>
    /// <remarks>
    /// This is the 1e-4 of the issue with two orders of magnitude to spare, and it takes all of llama.cpp's rounding: a
    /// single deviation from ggml's arithmetic moves these logits far more. Measured on the 32 recorded steps: the prefill's
    /// matrix products summed in ggml_vec_dot_f32's order instead of tinyBLAS's, up to 5.3e-4; the tail of ggml_vec_dot_f32
    /// fused, 2.3e-4; RoPE without its fused multiply-add, 3.5e-6. The f16 KV cache and f16 attention accumulator turn a
    /// one-ulp float32 difference upstream into a flipped f16 rounding, worth ~1e-4 of a logit.
    /// </remarks>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Stories260K_ReproducesLlamaCpp(int prompt)
    {
        var r = LlamaCpp.Value[prompt];
        var context = Stories260K.Value.NewContext();
        var logits = context.Decode(r.PromptIds);
        double worst = 0;
        for (int step = 0; step < r.GreedyIds.Length; step++)
        {
            if (step < r.Top20.Length)
            {
                foreach (var (token, expected) in r.Top20[step])
                {
                    double rel = Math.Abs(logits[token] - expected) / Math.Max(1, Math.Abs(expected));
                    worst = Math.Max(worst, rel);
                    Assert.True(rel <= 1e-6, $"step {step}, token {token}: emulation {logits[token]:R}, llama.cpp {expected:R} (relative {rel:E2})");
                }
                var ours = logits.Select((v, i) => (v, i)).OrderByDescending(p => p.v).Take(20).Select(p => p.i);
                Assert.Equal(r.Top20[step].Select(p => p.Token), ours);
            }
            Assert.Equal(r.GreedyIds[step], ArgMax(logits));
            if (step + 1 < r.GreedyIds.Length) logits = context.Decode([r.GreedyIds[step]]);
        }
        output.WriteLine($"'{r.Prompt}': {r.GreedyIds.Length} greedy ids equal, worst top-20 relative error {worst:E2}");
    }

    /// <summary>
    /// llama.cpp's two values for the same sequence, 17.797604 after "Once upon a time" as a prompt and 17.797935 for the
    /// same five tokens reached by decoding from BOS: the prompt is one batch (tinyBLAS matrix products), the decode is
    /// batches of one (ggml_vec_dot_f32), and through the f16 cache the two summation orders end 3.3e-4 apart.
    /// </summary>
    [Fact]
    public void Stories260K_PrefillAndDecodeDifferAsInLlamaCpp()
    {
        var fromBos = LlamaCpp.Value[0];
        var prompted = LlamaCpp.Value[1];
        Assert.Equal(prompted.PromptIds, fromBos.PromptIds.Concat(fromBos.GreedyIds.Take(4)));
        int token = prompted.Top20[0][0].Token;

        var decoded = Stories260K.Value.NewContext();
        var logits = decoded.Decode(fromBos.PromptIds);
        for (int step = 0; step < 4; step++) logits = decoded.Decode([fromBos.GreedyIds[step]]);
        var prefilled = Stories260K.Value.NewContext().Decode(prompted.PromptIds);

        Assert.Equal((float)fromBos.Top20[4].Single(p => p.Token == token).Logit, logits[token]);
        Assert.Equal((float)prompted.Top20[0][0].Logit, prefilled[token]);
        Assert.NotEqual(logits[token], prefilled[token]);
    }

    /// <summary>The bit-level f16 rounding equals .NET's (float)(Half)x: every 4099th float bit pattern, and every tie.</summary>
    [Fact]
    public void RoundToHalf_EqualsHalfConversion()
    {
        for (ulong b = 0; b <= uint.MaxValue; b += 4099) Check((uint)b);
        // Ties: exactly halfway between two f16 values in the normal range (bit 12 set, bits 0..11 clear).
        for (uint e = 0x38800000u; e < 0x47800000u; e += 0x00800000u)
            for (uint m = 0; m < 0x800000u; m += 0x2000u)
            {
                Check(e | m | 0x1000u);
                Check(0x80000000u | e | m | 0x1000u);
            }

        static void Check(uint bits)
        {
            float x = BitConverter.UInt32BitsToSingle(bits);
            float expected = (float)(Half)x, actual = GgmlCpu.RoundToHalf(x);
            if (BitConverter.SingleToUInt32Bits(expected) != BitConverter.SingleToUInt32Bits(actual))
                Assert.Fail($"0x{bits:x8} ({x:R}): {actual:R}, expected {expected:R}");
        }
    }

    /// <summary>ggml_v_expf's documented bound: at most 1.45 + 0.5 ulp from e^x, here over [−80, 80].</summary>
    [Fact]
    public void VectorExp_IsWithinItsDocumentedUlpBound()
    {
        for (float x = -80; x <= 80; x += 0.0137f)
        {
            double exact = Math.Exp(x);
            double ulp = MathF.BitIncrement((float)exact) - (float)exact;
            Assert.True(Math.Abs(GgmlCpu.VectorExp(x) - exact) <= 1.96 * ulp, $"x = {x:R}: {GgmlCpu.VectorExp(x):R} vs {exact:R}");
        }
        Assert.Equal(1f, GgmlCpu.VectorExp(0f));
    }

    /// <summary>
    /// The two kernels' summation orders, told apart by cancellation: 2^24 + 1 − 2^24 is 0 or 1 depending on what meets first.
    /// tinyBLAS keeps column l in lane l mod 8 and adds lanes (t, t+4), then (0+2) + (1+3); ggml_vec_dot_f32 keeps column l
    /// of each 32-block in its own accumulator, reduces 0..7 with 16..23 and 8..15 with 24..31, then adds the tail in order.
    /// </summary>
    [Fact]
    public void DotProducts_SumInTheirKernelsOrder()
    {
        const float big = 16777216f; // 2^24: big + 1 rounds back to big
        var ones = Enumerable.Repeat(1f, 40).ToArray();

        var a = new float[8];
        a[0] = big; a[4] = 1; a[2] = -big; // (a0 + a4) loses the 1, then cancels with a2: 0 (left to right: 1)
        Assert.Equal(0f, GgmlCpu.TinyBlasDot(a, ones.AsSpan(0, 8)));
        a = new float[8];
        a[0] = big; a[1] = 1; a[2] = -big; // a0 and a2 cancel before a1 joins: 1 (left to right: 0)
        Assert.Equal(1f, GgmlCpu.TinyBlasDot(a, ones.AsSpan(0, 8)));

        var x = new float[40];
        x[0] = big; x[16] = -big; x[8] = 1; // accumulators 0 and 16 cancel before 8 joins: 1 (left to right: 0)
        Assert.Equal(1f, GgmlCpu.VecDotF32(x, ones));
        x = new float[40];
        x[0] = big; x[4] = 1; x[32] = -big; // lane 0 + lane 4 loses the 1 before the tail (column 32) subtracts big
        Assert.Equal(0f, GgmlCpu.VecDotF32(x, ones));
    }

    private static int ArgMax(float[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
