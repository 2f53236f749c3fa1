using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace KvSharp.Tests.Reference;

/// <summary>
/// The float32 arithmetic of ggml's CPU backend as llama.cpp c0c7e147 computes a Llama layer: the build LLamaSharp 0.30.0
/// ships in LLamaSharp.Backend.Cpu, AVX2 + FMA variant (the one it loads on this machine). Every rounding is reproduced:
/// the order of each sum, which products are fused, where values become f16, and ggml's own exp approximation.
/// </summary>
/// <remarks>
/// Written from ggml's definitions and confirmed tensor by tensor against llama.cpp's intermediate tensors (dumped through
/// its eval callback with bench/KvSharp.Bench <c>llamacpp-check --dump</c>): every tensor of every layer, every prompt
/// and step of ../shared/reference/stories260k.llamacpp.json is bit-identical. What each rule is and how it was pinned:
/// <list type="bullet">
/// <item>Matrix products: one output row of a batch of one is <c>ggml_vec_dot_f32</c> (<see cref="VecDotF32"/>); a batch
/// of several rows goes to llamafile's tinyBLAS when the inner size is a multiple of 8 (<see cref="TinyBlasDot"/>) and to
/// <c>ggml_vec_dot_f32</c> otherwise (ffn_down, 172 columns). Using vec_dot for the prefill as well moves stories260K's
/// logits by up to 6e-3: the order of a sum is visible through the f16 KV cache.</item>
/// <item>RMSNorm: squares rounded to float, summed in double; mean and 1/sqrt in float; (x · scale) · weight.</item>
/// <item>RoPE ("normal", adjacent pairs): θ starts at the position and is multiplied by powf(base, −2/d) once per pair,
/// cosf/sinf of that float; x0·cos − x1·sin and x0·sin + x1·cos each with one fused multiply-add, the other product
/// rounded (the unfused and the other pairings leave Q and K a few ulps off).</item>
/// <item>SwiGLU: groups of 8 through ggml_v_silu (x / (1 + ggml_v_expf(−x)), ggml's polynomial exp), the tail through
/// the C library's expf.</item>
/// <item>Flash attention (<see cref="FlashAttentionF16"/>): the one-chunk path of ggml_compute_forward_flash_attn_ext_f16.</item>
/// </list>
/// cosf, sinf, expf and powf are the C library's: .NET's MathF calls the same glibc functions on Linux.
/// </remarks>
public static class GgmlCpu
{
    /// <summary>
    /// <c>ggml_vec_dot_f32</c> (AVX2): four 8-lane FMA accumulators over blocks of 32, reduced (0+2, 1+3, then 0+1,
    /// then the two 128-bit halves and two horizontal adds), then the tail added one unfused product at a time.
    /// </summary>
    public static float VecDotF32(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        int n = x.Length, blocks = n & ~31;
        // Each lane is its own FMA chain, so 8-wide vectors give exactly the scalar lanes' roundings.
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int i = 0; i < blocks; i += 32)
        {
            a0 = Vector256.FusedMultiplyAdd(Vector256.Create(x.Slice(i, 8)), Vector256.Create(y.Slice(i, 8)), a0);
            a1 = Vector256.FusedMultiplyAdd(Vector256.Create(x.Slice(i + 8, 8)), Vector256.Create(y.Slice(i + 8, 8)), a1);
            a2 = Vector256.FusedMultiplyAdd(Vector256.Create(x.Slice(i + 16, 8)), Vector256.Create(y.Slice(i + 16, 8)), a2);
            a3 = Vector256.FusedMultiplyAdd(Vector256.Create(x.Slice(i + 24, 8)), Vector256.Create(y.Slice(i + 24, 8)), a3);
        }
        var r = (a0 + a2) + (a1 + a3);
        float t0 = r[0] + r[4], t1 = r[1] + r[5], t2 = r[2] + r[6], t3 = r[3] + r[7];
        float sum = (t0 + t1) + (t2 + t3);
        for (int i = blocks; i < n; i++) sum += x[i] * y[i];
        return sum;
    }

    /// <summary>
    /// One output of llamafile's tinyBLAS f32 kernel (AVX2, 8 lanes, inner size a multiple of 8): lane t accumulates the
    /// products of columns ≡ t (mod 8) with FMA, then hsum adds the high half to the low half, (0+2) + (1+3).
    /// </summary>
    public static float TinyBlasDot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length % 8 != 0) throw new ArgumentException($"tinyBLAS needs an inner size that is a multiple of 8, not {a.Length}", nameof(a));
        Vector256<float> lane = default;
        for (int l = 0; l < a.Length; l += 8)
            lane = Vector256.FusedMultiplyAdd(Vector256.Create(a.Slice(l, 8)), Vector256.Create(b.Slice(l, 8)), lane);
        float x0 = lane[4] + lane[0], x1 = lane[5] + lane[1], x2 = lane[6] + lane[2], x3 = lane[7] + lane[3];
        return (x0 + x2) + (x1 + x3);
    }

    /// <summary>
    /// y[t] = W x[t] for <paramref name="n"/> rows x of <paramref name="cols"/>, W row-major [rows, cols], choosing the
    /// kernel as ggml_compute_forward_mul_mat does for f32 weights (see the class remarks).
    /// </summary>
    public static void MatMul(ReadOnlySpan<float> w, int rows, int cols, ReadOnlySpan<float> x, int n, Span<float> y)
    {
        bool tiny = n > 1 && cols % 8 == 0;
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++)
            {
                var wr = w.Slice(r * cols, cols);
                var xt = x.Slice(t * cols, cols);
                y[t * rows + r] = tiny ? TinyBlasDot(wr, xt) : VecDotF32(wr, xt);
            }
    }

    /// <summary>RMS_NORM then MUL: Σ x² in double over float squares, mean and 1/sqrt(mean + eps) in float, (x · scale) · w.</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> y)
    {
        double sum = 0;
        foreach (var v in x) sum += v * v;
        float mean = (float)(sum / x.Length);
        float scale = 1.0f / MathF.Sqrt(mean + eps);
        for (int i = 0; i < x.Length; i++) y[i] = x[i] * scale * weight[i];
    }

    /// <summary>RoPE of one head in ggml's "normal" mode (pairs (2i, 2i+1)) at <paramref name="position"/>, in place.</summary>
    public static void Rope(Span<float> head, int position, float freqBase)
    {
        float thetaScale = MathF.Pow(freqBase, -2.0f / head.Length);
        float theta = position;
        for (int i = 0; i < head.Length; i += 2)
        {
            float cos = MathF.Cos(theta), sin = MathF.Sin(theta);
            theta *= thetaScale;
            float x0 = head[i], x1 = head[i + 1];
            head[i] = MathF.FusedMultiplyAdd(x0, cos, -(x1 * sin));
            head[i + 1] = MathF.FusedMultiplyAdd(x0, sin, x1 * cos);
        }
    }

    /// <summary>
    /// ggml_v_expf (AVX2 + FMA): e^x = 2^n · (1 + p(b)) with n = round(x / ln 2) through the 1.5·2^23 trick, b = x − n ln 2
    /// in two FMA steps, a degree-5 polynomial, and the scaling by 2^n done on the exponent bits (split in two when |n| &gt; 126).
    /// </summary>
    public static float VectorExp(float x)
    {
        float r = Bits(0x4b400000); // 0x1.8p23
        float z = MathF.FusedMultiplyAdd(x, Bits(0x3fb8aa3b), r); // x · log2(e) + r
        float n = z - r;
        float b = MathF.FusedMultiplyAdd(-n, Bits(0x35bfbe8e), MathF.FusedMultiplyAdd(-n, Bits(0x3f317200), x)); // x − n·ln2 (hi, lo)
        uint e = BitConverter.SingleToUInt32Bits(z) << 23;
        float k = BitConverter.UInt32BitsToSingle(e + BitConverter.SingleToUInt32Bits(1f));
        float u = b * b;
        float j = MathF.FusedMultiplyAdd(
            MathF.FusedMultiplyAdd(MathF.FusedMultiplyAdd(Bits(0x3c072010), b, Bits(0x3d2b9f17)), u,
                MathF.FusedMultiplyAdd(Bits(0x3e2aaf33), b, Bits(0x3efffedb))),
            u, Bits(0x3f7ffff6) * b);
        if (!(MathF.Abs(n) > 126)) return MathF.FusedMultiplyAdd(j, k, k);
        uint g = n <= 0 ? 0x82000000u : 0u;
        float s1 = BitConverter.UInt32BitsToSingle(g + 0x7f000000u);
        float s2 = BitConverter.UInt32BitsToSingle(e - g);
        return MathF.Abs(n) > 192 ? s1 * s1 : MathF.FusedMultiplyAdd(s2, j, s2) * s1;
    }

    /// <summary>ggml_vec_swiglu_f32: y = silu(gate) · up, the first multiple of 8 through <see cref="VectorExp"/>, the rest through expf.</summary>
    public static void Swiglu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        int n = gate.Length, vectorized = n & ~7;
        for (int i = 0; i < vectorized; i++) y[i] = gate[i] / (1f + VectorExp(0f - gate[i])) * up[i];
        for (int i = vectorized; i < n; i++) y[i] = gate[i] / (1.0f + MathF.Exp(-gate[i])) * up[i];
    }

    /// <summary>
    /// One query row of ggml_compute_forward_flash_attn_ext_f16's one-chunk path over an F16 cache: <paramref name="keys"/>
    /// and <paramref name="values"/> hold [count, headDim] f16 values (stored widened, see <see cref="AppendHalf"/>), positions
    /// 0..count-1 all visible. The query is rounded to f16; each score is the f16·f16 dot product (exact float products
    /// summed in double, rounded to float) times <paramref name="scale"/>; an online softmax keeps the running maximum M and
    /// sum S in float and the weighted sum of values in an <b>f16</b> vector, updated element by element in float and
    /// rounded back (a new maximum rescales it by expf(Mold − M); otherwise v · expf(s − M) is added with one fused
    /// multiply-add); S = S · ms + vs unfused; the output is acc · (1/S).
    /// </summary>
    /// <remarks>
    /// llama.cpp takes this path while the query batch is short (the recorded prompts are at most 20 tokens) and the KV
    /// view is under 512 cells (it pads the view to 256, so up to 256 tokens); longer batches take the tiled path and a
    /// single query over 512 or more cells the split-KV path, neither of which is reproduced here. Masked cells are skipped
    /// before any arithmetic, so the padding does not change the result.
    /// </remarks>
    public static void FlashAttentionF16(ReadOnlySpan<float> query, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count, float scale, Span<float> output)
    {
        int hd = query.Length;
        Span<float> q = stackalloc float[hd];
        for (int i = 0; i < hd; i++) q[i] = RoundToHalf(query[i]);
        Span<float> acc = stackalloc float[hd];
        acc.Clear();
        float max = float.NegativeInfinity, sum = 0;
        for (int j = 0; j < count; j++)
        {
            var k = keys.Slice(j * hd, hd);
            double dot = 0;
            for (int i = 0; i < hd; i++) dot += q[i] * k[i];
            float s = (float)dot * scale;
            float ms = 1, vs = 1;
            if (s > max)
            {
                float old = max;
                max = s;
                ms = MathF.Exp(old - max);
                for (int i = 0; i < hd; i++) acc[i] = RoundToHalf(acc[i] * ms);
            }
            else vs = MathF.Exp(s - max);
            var v = values.Slice(j * hd, hd);
            for (int i = 0; i < hd; i++) acc[i] = RoundToHalf(MathF.FusedMultiplyAdd(v[i], vs, acc[i]));
            sum = sum * ms + vs;
        }
        float inv = sum == 0 ? 0 : 1.0f / sum;
        for (int i = 0; i < hd; i++) output[i] = acc[i] * inv;
    }

    /// <summary>Appends <paramref name="x"/> rounded to f16 (as ggml's SET_ROWS into an F16 cache), kept widened to float.</summary>
    public static void AppendHalf(List<float> to, ReadOnlySpan<float> x)
    {
        foreach (var v in x) to.Add(RoundToHalf(v));
    }

    /// <summary>The elements of <paramref name="list"/> as a span (no copy).</summary>
    public static ReadOnlySpan<float> AsSpan(List<float> list) => CollectionsMarshal.AsSpan(list);

    /// <summary>
    /// x rounded to the nearest f16 (ties to even, as F16C's vcvtps2ph), widened back: (float)(Half)x. The normal f16
    /// range is done on the bits (drop 13 mantissa bits, rounding to even), .NET's conversion does the rest; the fast path
    /// exists because the emulation rounds the attention accumulator millions of times per test.
    /// </summary>
    public static float RoundToHalf(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x), abs = bits & 0x7fffffffu;
        if (abs < 0x38800000u || abs >= 0x47000000u) return (float)(Half)x; // f16 subnormal, ≥ 2^15, inf, NaN
        abs += 0x0fffu + ((abs >> 13) & 1u);
        return BitConverter.UInt32BitsToSingle((bits & 0x80000000u) | (abs & ~0x1fffu));
    }

    private static float Bits(uint bits) => BitConverter.UInt32BitsToSingle(bits);
}
