using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Generation;
using KvSharp.Tests.Reference;

namespace KvSharp.Tests.Compute;

/// <summary>
/// The pieces of <see cref="CpuNumerics.LlamaCpp"/> against hand-computed values, exact conversions and documented bounds
/// (the whole mode is checked against llama.cpp's recorded logits in Models/EngineExactnessTests).
/// </summary>
public sealed class GgmlNumericsTests
{
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
            float expected = (float)(Half)x, actual = GgmlElementwise.RoundToHalf(x);
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
            Assert.True(Math.Abs(GgmlElementwise.VectorExp(x) - exact) <= 1.96 * ulp, $"x = {x:R}: {GgmlElementwise.VectorExp(x):R} vs {exact:R}");
        }
        Assert.Equal(1f, GgmlElementwise.VectorExp(0f));
    }

    /// <summary>
    /// The kernels' summation orders, told apart by cancellation: 2^24 + 1 − 2^24 is 0 or 1 depending on what meets first.
    /// tinyBLAS keeps column l in lane l mod 8 and adds lanes (t, t+4), then (0+2) + (1+3); ggml_vec_dot_f32 keeps column l
    /// of each 32-block in its own accumulator, reduces 0..7 with 16..23 and 8..15 with 24..31, then adds the tail in order
    /// in float; ggml_vec_dot_f16 adds the tail in double.
    /// </summary>
    [Fact]
    public void DotProducts_SumInTheirKernelsOrder()
    {
        const float big = 16777216f; // 2^24: big + 1 rounds back to big
        var ones = Enumerable.Repeat(1f, 40).ToArray();

        var a = new float[8];
        a[0] = big; a[4] = 1; a[2] = -big; // (a0 + a4) loses the 1, then cancels with a2: 0 (left to right: 1)
        Assert.Equal(0f, GgmlOrderDot.TinyBlas(a, ones.AsSpan(0, 8)));
        a = new float[8];
        a[0] = big; a[1] = 1; a[2] = -big; // a0 and a2 cancel before a1 joins: 1 (left to right: 0)
        Assert.Equal(1f, GgmlOrderDot.TinyBlas(a, ones.AsSpan(0, 8)));

        var x = new float[40];
        x[0] = big; x[16] = -big; x[8] = 1; // accumulators 0 and 16 cancel before 8 joins: 1 (left to right: 0)
        Assert.Equal(1f, GgmlOrderDot.VecDotF32(x, ones));
        x = new float[40];
        x[0] = big; x[4] = 1; x[32] = -big; // lane 0 + lane 4 loses the 1 before the tail (column 32) subtracts big
        Assert.Equal(0f, GgmlOrderDot.VecDotF32(x, ones));

        var tail = new float[3];
        tail[0] = big; tail[1] = 1; tail[2] = -big; // in double the 1 survives: 1 (float tail: 0)
        Assert.Equal(1f, GgmlOrderDot.VecDotF16(tail, ones.AsSpan(0, 3)));
        Assert.Equal(0f, GgmlOrderDot.VecDotF32(tail, ones.AsSpan(0, 3)));
    }

    /// <summary>
    /// The threaded, register-tiled matrix product gives every output the bits of its kernel's one-output order: tinyBLAS
    /// for a batch (inner size a multiple of 8), ggml_vec_dot_f32 for one row or an inner size that is not; F16 weights
    /// with the activations rounded to f16 first. Shapes leave remainders of both tiles (rows % 4, batch % 3).
    /// </summary>
    [Theory]
    [InlineData(GgmlType.F32, 4, 37, 64)]
    [InlineData(GgmlType.F32, 7, 37, 172)]
    [InlineData(GgmlType.F32, 1, 37, 64)]
    [InlineData(GgmlType.F16, 5, 38, 96)]
    [InlineData(GgmlType.F16, 1, 38, 96)]
    public void MatMul_GivesEachOutputItsKernelsBits(GgmlType type, int n, int rows, int cols)
    {
        var rng = new Random(rows * cols + n);
        var wf = TestTensor.RandomValues(rng, rows * cols, 0.5);
        var x = TestTensor.RandomValues(rng, n * cols, 1.0);
        using var w = new TestTensor(type, rows, cols, Quantize.Matrix(type, wf, rows, cols));
        var y = new float[n * rows];
        GgmlMatMul.Multiply(w.View, x, y, n);

        var row = new float[cols];
        var xr = type == GgmlType.F16 ? x.Select(v => (float)(Half)v).ToArray() : x;
        for (int r = 0; r < rows; r++)
        {
            Kernels.GetRow(w.View, r, row);
            for (int t = 0; t < n; t++)
            {
                var xt = xr.AsSpan(t * cols, cols);
                float expected = n > 1 && cols % 8 == 0 ? GgmlOrderDot.TinyBlas(row, xt)
                    : type == GgmlType.F16 ? GgmlOrderDot.VecDotF16(row, xt) : GgmlOrderDot.VecDotF32(row, xt);
                Assert.Equal(expected, y[t * rows + r]);
            }
        }
    }

    /// <summary>
    /// llama.cpp's two values for the same sequence, 17.797604 after "Once upon a time" as a prompt and 17.797935 for the
    /// same five tokens reached by decoding from BOS: the prompt is one batch (tinyBLAS matrix products), the decode is
    /// batches of one (ggml_vec_dot_f32), and through the f16 cache the two summation orders end 3.3e-4 apart. The engine in
    /// llama.cpp numerics gives both recorded values.
    /// </summary>
    [Fact]
    public void Stories260K_PrefillAndDecodeDifferAsInLlamaCpp()
    {
        var reference = ReferenceOutput.Load(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json"));
        var fromBos = reference[0];
        var prompted = reference[1];
        Assert.Equal(prompted.PromptIds, fromBos.PromptIds.Concat(fromBos.GreedyIds.Take(4)));
        int token = prompted.Top20[0][0].Token;

        using var model = LanguageModel.Load(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"), CpuNumerics.LlamaCpp);
        using var decoded = model.CreateCache(64);
        var logits = model.Transformer.Forward(fromBos.PromptIds, decoded);
        for (int step = 0; step < 4; step++) logits = model.Transformer.Forward([fromBos.GreedyIds[step]], decoded);
        using var prefilled = model.CreateCache(64);
        var prefill = model.Transformer.Forward(prompted.PromptIds, prefilled);

        Assert.Equal((float)fromBos.Top20[4].Single(p => p.Token == token).Logit, logits[token]);
        Assert.Equal((float)prompted.Top20[0][0].Logit, prefill[token]);
        Assert.NotEqual(logits[token], prefill[token]);
    }
}
