using KvSharp.Cache.Blocks;
using static KvSharp.Tests.Cache.Blocks.BlockTestData;

namespace KvSharp.Tests.Cache.Blocks;

/// <summary>
/// The packed-format fast paths: sub-byte codes unpacked to bytes (<see cref="CodeUnpack"/>) against bit arithmetic
/// written here, and the register-blocked value kernels against float64 sums over the decoded block, with query
/// groups of 1 to 9, token counts that leave tails of every blocking, channel groups of 8 (a single 8-wide chunk)
/// and head dimensions that are not multiples of 16 or 32, blocks too large for the unpack scratch, on the AVX2 path
/// and on the scalar fallback.
/// </summary>
public class PackedKernelTests
{
    [Theory]
    [InlineData(KvFormat.Int4, 4)]
    [InlineData(KvFormat.Int2, 2)]
    [InlineData(KvFormat.Ternary, 2)]
    [InlineData(KvFormat.Binary, 1)]
    public void UnpackSpreadsEveryCodeToOneByte(KvFormat format, int bits)
    {
        var rng = new Random(bits);
        // 8·k codes for k that are not multiples of the 32/64-code vector steps, so the scalar tails run too.
        foreach (int codes in new[] { 8, 24, 64, 72, 1000, 4096, 4104 })
        {
            var packed = new byte[codes * bits / 8];
            rng.NextBytes(packed);
            var unpacked = new byte[codes];
            CodeUnpack.Unpack(format, packed, unpacked);
            for (int e = 0; e < codes; e++)
            {
                int expected = (packed[e * bits / 8] >> (e * bits % 8)) & ((1 << bits) - 1);
                Assert.True(expected == unpacked[e], $"{format}, {codes} codes: code {e} is {unpacked[e]}, expected {expected}");
            }
        }
    }

    public static TheoryData<bool> Paths() => new() { false, true };

    [Theory]
    [MemberData(nameof(Paths))]
    public void GroupedValuesEqualFloat64OverDecodedValues(bool scalar)
    {
        using var _ = new ScalarScope(scalar);
        foreach (int d in new[] { 24, 64 })
            foreach (var format in new[] { KvFormat.F32, KvFormat.F16, KvFormat.Fp8E4M3, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary })
            {
                var layouts = format.IsQuantized()
                    ? new[] { new BlockLayout(format, QuantAxis.PerToken, 8, 64, d), BlockLayout.ForValues(format, d, 64), BlockLayout.ForKeys(format, d, 64) }
                    : new[] { new BlockLayout(format, QuantAxis.PerToken, 0, 64, d) };
                foreach (var layout in layouts)
                    foreach (int n in new[] { 64, 33, 5 })
                        foreach (int g in new[] { 1, 3, 4, 9 })
                            CheckValues(layout, n, g, seed: d + n + g);
            }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void GroupedScoresEqualFloat64OverDecodedKeys(bool scalar)
    {
        using var _ = new ScalarScope(scalar);
        foreach (int d in new[] { 24, 64 })
            foreach (var format in new[] { KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary })
                foreach (var layout in new[] { BlockLayout.ForKeys(format, d, 64), new BlockLayout(format, QuantAxis.PerToken, 8, 64, d) })
                    foreach (int n in new[] { 64, 33, 5 })
                        foreach (int g in new[] { 1, 4, 9 })
                            CheckScores(layout, n, g, seed: d + n + g);
    }

    /// <summary>A block of 256 tokens × 128 channels holds more codes than the unpack scratch: the packed readers run.</summary>
    [Fact]
    public void BlocksLargerThanTheUnpackScratchReadPackedCodes()
    {
        foreach (var format in new[] { KvFormat.Int4, KvFormat.Int2, KvFormat.Binary })
        {
            Assert.False(CodeUnpack.Applies(format, 256 * 128));
            CheckValues(BlockLayout.ForValues(format, 128, 256), 256, 4, seed: 7);
            CheckScores(BlockLayout.ForKeys(format, 128, 256), 200, 4, seed: 8);
        }
    }

    private static void CheckValues(BlockLayout layout, int n, int g, int seed)
    {
        int d = layout.HeadDim;
        var block = Encode(layout, Rows(seed, n, d), n);
        var v = Decode(layout, block, n);
        var w = Gaussians(seed + 1, g * n).Select(MathF.Abs).ToArray();
        var acc0 = Gaussians(seed + 2, g * d);
        var acc = (float[])acc0.Clone();
        BlockAttention.AccumulateValues(layout, block, n, w, g, acc);
        // Per-token groups fold the group's min into one term per block (acc + Σ w·step·code, then + Σ w·min), so the
        // rounding error scales with the group's magnitude, not the element's: an element near 0 in a group whose min
        // is far from 0 carries that group's cancellation. The bound therefore uses max |x̂| over the element's group.
        int gs = layout.Format.IsQuantized() && layout.Axis == QuantAxis.PerToken ? layout.GroupSize : 1;
        for (int i = 0; i < g; i++)
            for (int c = 0; c < d; c++)
            {
                double exact = acc0[i * d + c], mag = Math.Abs(exact);
                for (int t = 0; t < n; t++)
                {
                    double p = (double)w[i * n + t] * v[t * d + c];
                    exact += p;
                    double groupMax = 0;
                    for (int u = c / gs * gs; u < c / gs * gs + gs; u++) groupMax = Math.Max(groupMax, Math.Abs(v[t * d + u]));
                    mag += w[i * n + t] * groupMax;
                }
                Assert.True(Math.Abs(acc[i * d + c] - exact) <= 1e-5 * mag + 1e-30,
                    $"{layout}, {n} tokens, group {g}: query {i} channel {c}: {acc[i * d + c]} vs {exact}");
            }
    }

    private static void CheckScores(BlockLayout layout, int n, int g, int seed)
    {
        int d = layout.HeadDim;
        var block = Encode(layout, Rows(seed, n, d), n);
        var k = Decode(layout, block, n);
        var q = Gaussians(seed + 3, g * d, 1 / Math.Sqrt(d));
        var scores = new float[g * n];
        BlockAttention.Scores(layout, block, n, q, g, scores);
        for (int i = 0; i < g; i++)
            for (int t = 0; t < n; t++)
            {
                double exact = 0, mag = 0;
                for (int c = 0; c < d; c++) { double p = (double)q[i * d + c] * k[t * d + c]; exact += p; mag += Math.Abs(p); }
                Assert.True(Math.Abs(scores[i * n + t] - exact) <= 1e-5 * mag + 1e-30,
                    $"{layout}, {n} tokens, group {g}: query {i} token {t}: {scores[i * n + t]} vs {exact}");
            }
    }
}
