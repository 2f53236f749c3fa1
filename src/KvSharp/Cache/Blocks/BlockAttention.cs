using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// Attention kernels over one KV block in any <see cref="KvFormat"/>, reading the stored bytes directly:
/// codes are widened in registers and each group's scale/min is folded into the query (keys) or the
/// weight (values), so no float copy of the block is ever made. Several queries (a GQA group sharing the
/// KV head, or a few decode positions) are served by one pass over the block: each token row is loaded
/// once and, while in L1, used for every query.
/// </summary>
/// <remarks>
/// Algebra for a quantized group with parameters (min, step) (ternary: (−scale, scale); binary: (mean − scale, 2·scale)):
/// per-channel keys: q·k_t = Σ_c q_c·min_c + Σ_c (q_c·step_c)·code_tc, with the first sum and q·step computed
/// once per token group; per-token keys: Σ_groups [min_g·Σ_{c∈g} q_c + step_g·Σ_{c∈g} q_c·code_tc];
/// values: acc_c += w_t·min + (w_t·step)·code_tc.
/// </remarks>
// Every stackalloc'd scratch here is fully written before it is read (and read only within the written slice), so the
// 8 KB zero-fill .NET would otherwise do per kernel call (per block, twice) is skipped: at 32 tokens per block it
// cost about as much as the block's arithmetic.
[SkipLocalsInit]
public static class BlockAttention
{
    private const int StackFloats = 2048;

    /// <summary>
    /// scores[t] = query · k_t for the first <paramref name="tokenCount"/> keys of the block.
    /// <paramref name="query"/> is [HeadDim] and already multiplied by the softmax scale (1/√d).
    /// </summary>
    public static void Scores(BlockLayout layout, ReadOnlySpan<byte> block, int tokenCount, ReadOnlySpan<float> query, Span<float> scores)
        => Scores(layout, block, tokenCount, query, 1, scores);

    /// <summary>
    /// scores[i, t] = queries[i] · k_t for <paramref name="queryCount"/> queries ([queryCount, HeadDim], pre-scaled)
    /// and the first <paramref name="tokenCount"/> keys; <paramref name="scores"/> is [queryCount, tokenCount] (row stride tokenCount).
    /// </summary>
    public static void Scores(BlockLayout layout, ReadOnlySpan<byte> block, int tokenCount, ReadOnlySpan<float> queries, int queryCount, Span<float> scores)
    {
        layout.CheckBlock(block.Length, tokenCount, "key");
        CheckRows(queries.Length, queryCount, layout.HeadDim, "queries");
        CheckRows(scores.Length, queryCount, tokenCount, "scores");
        if (tokenCount == 0) return;
        if (PadToFour(layout, queryCount, tokenCount))
        {
            int d = layout.HeadDim;
            Span<float> q4 = stackalloc float[4 * d];
            queries[..(3 * d)].CopyTo(q4);
            q4[(3 * d)..].Clear();
            Span<float> s4 = stackalloc float[4 * tokenCount];
            Scores(layout, block, tokenCount, q4, 4, s4);
            s4[..(3 * tokenCount)].CopyTo(scores);
            return;
        }
        switch (layout.Format)
        {
            case KvFormat.F32: ScoresFloat<F32Reader>(layout.HeadDim, block, tokenCount, queries, queryCount, scores); break;
            case KvFormat.F16:
                if (Simd.Enabled && F16Finite(block, tokenCount * layout.HeadDim)) ScoresF16Scaled(layout, block, tokenCount, queries, queryCount, scores);
                else ScoresFloat<F16Reader>(layout.HeadDim, block, tokenCount, queries, queryCount, scores);
                break;
            case KvFormat.BF16: ScoresFloat<Bf16Reader>(layout.HeadDim, block, tokenCount, queries, queryCount, scores); break;
            case KvFormat.Fp8E4M3: ScoresFloat<Fp8Reader>(layout.HeadDim, block, tokenCount, queries, queryCount, scores); break;
            case KvFormat.Int8: ScoresQuantized<Code8Reader>(layout, block, block, tokenCount, queries, queryCount, scores); break;
            case KvFormat.Int4:
            case KvFormat.Int2:
            case KvFormat.Ternary:
            case KvFormat.Binary: ScoresPacked(layout, block, tokenCount, queries, queryCount, scores); break;
            case KvFormat.VidKvKey:
            case KvFormat.VidKvValue: VidKvAttention.Scores(layout, block, tokenCount, queries, queryCount, scores); break;
            default: throw new KvSharpException($"unknown KV block format {layout.Format}");
        }
    }

    /// <summary>acc += Σ_t weights[t] · v_t over the first <paramref name="tokenCount"/> values; acc is [HeadDim].</summary>
    public static void AccumulateValues(BlockLayout layout, ReadOnlySpan<byte> block, int tokenCount, ReadOnlySpan<float> weights, Span<float> acc)
        => AccumulateValues(layout, block, tokenCount, weights, 1, acc);

    /// <summary>
    /// acc[i] += Σ_t weights[i, t] · v_t for <paramref name="queryCount"/> rows: <paramref name="weights"/> is
    /// [queryCount, tokenCount] (row stride tokenCount), <paramref name="acc"/> is [queryCount, HeadDim].
    /// </summary>
    public static void AccumulateValues(BlockLayout layout, ReadOnlySpan<byte> block, int tokenCount, ReadOnlySpan<float> weights, int queryCount, Span<float> acc)
    {
        layout.CheckBlock(block.Length, tokenCount, "value");
        CheckRows(weights.Length, queryCount, tokenCount, "weights");
        CheckRows(acc.Length, queryCount, layout.HeadDim, "accumulator");
        if (tokenCount == 0) return;
        if (PadToFour(layout, queryCount, tokenCount))
        {
            int d = layout.HeadDim;
            Span<float> w4 = stackalloc float[4 * tokenCount];
            weights[..(3 * tokenCount)].CopyTo(w4);
            w4[(3 * tokenCount)..].Clear();
            Span<float> a4 = stackalloc float[4 * d];
            acc[..(3 * d)].CopyTo(a4);
            a4[(3 * d)..].Clear();
            AccumulateValues(layout, block, tokenCount, w4, 4, a4);
            a4[..(3 * d)].CopyTo(acc);
            return;
        }
        switch (layout.Format)
        {
            case KvFormat.F32: AccumulateFloat<F32Reader>(layout.HeadDim, block, tokenCount, weights, queryCount, acc); break;
            case KvFormat.F16:
                if (!Simd.Enabled || !F16Finite(block, tokenCount * layout.HeadDim) || !AccumulateF16Scaled(layout, block, tokenCount, weights, queryCount, acc))
                    AccumulateFloat<F16Reader>(layout.HeadDim, block, tokenCount, weights, queryCount, acc);
                break;
            case KvFormat.BF16: AccumulateFloat<Bf16Reader>(layout.HeadDim, block, tokenCount, weights, queryCount, acc); break;
            case KvFormat.Fp8E4M3: AccumulateFloat<Fp8Reader>(layout.HeadDim, block, tokenCount, weights, queryCount, acc); break;
            case KvFormat.Int8: AccumulateQuantized<Code8Reader>(layout, block, block, tokenCount, weights, queryCount, acc); break;
            case KvFormat.Int4:
            case KvFormat.Int2:
            case KvFormat.Ternary:
            case KvFormat.Binary: AccumulatePacked(layout, block, tokenCount, weights, queryCount, acc); break;
            case KvFormat.VidKvKey:
            case KvFormat.VidKvValue: VidKvAttention.AccumulateValues(layout, block, tokenCount, weights, queryCount, acc); break;
            default: throw new KvSharpException($"unknown KV block format {layout.Format}");
        }
    }

    /// <summary>
    /// Whether a group of 3 queries (e.g. 9 query heads over 3 KV heads) runs as 4 with a zero fourth query: the
    /// 4-query kernels widen each stored row once for all queries instead of once per query, and the real queries'
    /// results are unchanged (every blocking does the same operations per (query, token)). F32 rows cost nothing to
    /// widen, so they keep the per-query path.
    /// </summary>
    private static bool PadToFour(BlockLayout layout, int queryCount, int tokenCount)
        => queryCount == 3 && layout.Format != KvFormat.F32 && Simd.Enabled && 4 * layout.HeadDim <= StackFloats && 4 * tokenCount <= StackFloats;

    private static void CheckRows(int length, int rows, int width, string what)
    {
        if (rows < 1) throw new ArgumentOutOfRangeException(nameof(rows), $"{what}: at least one query row is needed, got {rows}");
        if (length < (long)rows * width) throw new ArgumentException($"{what} holds {length} floats but {rows} rows of {width} are needed");
    }

    /// <summary>weights[i..i+3, t] of a [g, n] matrix.</summary>
    private static Vector128<float> Column4(ReadOnlySpan<float> m, int n, int i, int t)
        => Vector128.Create(m[i * n + t], m[(i + 1) * n + t], m[(i + 2) * n + t], m[(i + 3) * n + t]);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Scatter4(Span<float> m, int n, int i, int t, Vector128<float> v)
    {
        m[i * n + t] = v[0]; m[(i + 1) * n + t] = v[1]; m[(i + 2) * n + t] = v[2]; m[(i + 3) * n + t] = v[3];
    }

    /// <summary>2^112: what <see cref="F16ScaledReader"/> leaves out of every element.</summary>
    private const float TwoTo112 = 5.192296858534828e33f;

    /// <summary>Whether the first <paramref name="count"/> f16 elements are all finite (exponent field ≠ 31).</summary>
    private static bool F16Finite(ReadOnlySpan<byte> block, int count)
    {
        var h = MemoryMarshal.Cast<byte, ushort>(block[..(2 * count)]);
        int i = 0;
        var any = Vector256<ushort>.Zero;
        var exp = Vector256.Create((ushort)0x7C00);
        for (; i + 16 <= h.Length; i += 16)
            any |= Vector256.Equals(Vector256.LoadUnsafe(ref MemoryMarshal.GetReference(h), (nuint)i) & exp, exp);
        if (any != Vector256<ushort>.Zero) return false;
        for (; i < h.Length; i++)
            if ((h[i] & 0x7C00) == 0x7C00) return false;
        return true;
    }

    /// <summary>
    /// F16 keys through <see cref="F16ScaledReader"/>: queries·2^k against keys·2^-112 give every product as
    /// q·k·2^(k−112) exactly, so with k = 112 (every query below 2^14 in magnitude) the scores are bit-identical to
    /// the <see cref="F16Reader"/> path; larger queries take the largest k that keeps q·2^k finite and the
    /// scores are rescaled by 2^(112−k) afterwards.
    /// </summary>
    private static void ScoresF16Scaled(BlockLayout layout, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> queries, int g, Span<float> scores)
    {
        int len = g * layout.HeadDim;
        float[]? rented = null;
        Span<float> qs = len <= StackFloats ? stackalloc float[StackFloats] : (rented = ArrayPool<float>.Shared.Rent(len));
        qs = qs[..len];
        queries = queries[..len];
        float max = MathF.Abs(TensorPrimitives.MaxMagnitude(queries));
        int k = !float.IsFinite(max) || max == 0 ? 112 : Math.Min(112, 125 - MathF.ILogB(max));
        TensorPrimitives.Multiply(queries, MathF.ScaleB(1f, k), qs);
        ScoresFloat<F16ScaledReader>(layout.HeadDim, block, n, qs, g, scores);
        if (k != 112) TensorPrimitives.Multiply(scores[..(g * n)], MathF.ScaleB(1f, 112 - k), scores[..(g * n)]);
        if (rented != null) ArrayPool<float>.Shared.Return(rented);
    }

    /// <summary>
    /// F16 values through <see cref="F16ScaledReader"/> with the weights scaled by 2^112: each product w·v is the
    /// same real number as on the <see cref="F16Reader"/> path, so the accumulators are bit-identical. Returns
    /// false (nothing done) when a weight is too large for w·2^112 to stay finite (softmax weights never are).
    /// </summary>
    private static bool AccumulateF16Scaled(BlockLayout layout, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> weights, int g, Span<float> acc)
    {
        int len = g * n;
        weights = weights[..len];
        if (!(MathF.Abs(TensorPrimitives.MaxMagnitude(weights)) < 8192f)) return false; // 2^13·2^112 < 2^126: no overflow
        float[]? rented = null;
        Span<float> ws = len <= StackFloats ? stackalloc float[StackFloats] : (rented = ArrayPool<float>.Shared.Rent(len));
        ws = ws[..len];
        TensorPrimitives.Multiply(weights, TwoTo112, ws);
        AccumulateFloat<F16ScaledReader>(layout.HeadDim, block, n, ws, g, acc);
        if (rented != null) ArrayPool<float>.Shared.Return(rented);
        return true;
    }

    /// <summary>
    /// scores[i, t] = queries[i] · rows[t] over <paramref name="n"/> float32 rows [n, d] (blocks widened to floats,
    /// e.g. VidKV values), with the float-format kernels.
    /// </summary>
    internal static void ScoresRows(ReadOnlySpan<float> rows, int d, int n, ReadOnlySpan<float> queries, int g, Span<float> scores)
        => ScoresFloat<F32Reader>(d, MemoryMarshal.AsBytes(rows), n, queries, g, scores);

    /// <summary>acc[i] += Σ_t weights[i, t] · rows[t] over <paramref name="n"/> float32 rows [n, d], with the float-format kernels.</summary>
    internal static void AccumulateRows(ReadOnlySpan<float> rows, int d, int n, ReadOnlySpan<float> weights, int g, Span<float> acc)
        => AccumulateFloat<F32Reader>(d, MemoryMarshal.AsBytes(rows), n, weights, g, acc);

    // Blocking: with at least 4 queries, each token row is widened once and used by 4 queries (…4Queries);
    // with fewer, each query walks 4 token rows at a time (…4Rows). Both give identical per-(query, token) arithmetic.

    private static void ScoresFloat<R>(int d, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> queries, int g, Span<float> scores)
        where R : struct, IElementReader
    {
        int t = 0;
        bool simd = Simd.Enabled;
        ref byte b = ref MemoryMarshal.GetReference(block);
        if (g >= 4)
        {
            int full = g / 4 * 4;
            for (; t + 2 <= n; t += 2)
                for (int i = 0; i < full; i += 4)
                {
                    var (r0, r1) = RowKernels<R>.Dot2Rows4Queries(simd, ref b, t * d, d, queries[(i * d)..], d, d);
                    Scatter4(scores, n, i, t, r0);
                    Scatter4(scores, n, i, t + 1, r1);
                }
            for (; t < n; t++)
                for (int i = 0; i < full; i += 4)
                    Scatter4(scores, n, i, t, RowKernels<R>.Dot4Queries(simd, ref b, t * d, queries[(i * d)..], d, d));
            for (int i = full; i < g; i++)
                for (int u = 0; u < n; u++)
                    scores[i * n + u] = RowKernels<R>.Dot(simd, ref b, u * d, queries.Slice(i * d, d));
            return;
        }
        for (; t + 4 <= n; t += 4)
            for (int i = 0; i < g; i++)
                RowKernels<R>.Dot4Rows(simd, ref b, t * d, d, queries.Slice(i * d, d)).CopyTo(scores.Slice(i * n + t, 4));
        for (; t < n; t++)
            for (int i = 0; i < g; i++)
                scores[i * n + t] = RowKernels<R>.Dot(simd, ref b, t * d, queries.Slice(i * d, d));
    }

    private static void AccumulateFloat<R>(int d, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> weights, int g, Span<float> acc)
        where R : struct, IElementReader
    {
        int i = 0;
        bool simd = Simd.Enabled;
        ref byte b = ref MemoryMarshal.GetReference(block);
        if (g >= 4)
        {
            float[]? rented = null;
            Span<float> coef = 4 * n <= StackFloats ? stackalloc float[StackFloats] : (rented = ArrayPool<float>.Shared.Rent(4 * n));
            for (; i + 4 <= g; i += 4)
            {
                for (int t = 0; t < n; t++)
                    Column4(weights, n, i, t).CopyTo(coef.Slice(4 * t, 4));
                ValueKernels<R>.Accumulate4(simd, ref b, 0, d, n, coef, acc[(i * d)..], d, d);
            }
            if (rented != null) ArrayPool<float>.Shared.Return(rented);
        }
        for (; i < g; i++)
            ValueKernels<R>.Accumulate1(simd, ref b, 0, d, n, weights.Slice(i * n, n), 1, acc.Slice(i * d, d));
    }

    /// <summary>
    /// Converts the stored parameters of groups [first, first + count) to the affine form x = min + step·code
    /// (ternary: min = −scale, step = scale; binary: min = mean − scale, step = 2·scale), vectorized.
    /// </summary>
    private static void GroupAffine(BlockLayout layout, ReadOnlySpan<byte> block, int first, int count, Span<float> min, Span<float> step)
    {
        int groups = layout.GroupCount;
        min = min[..count];
        step = step[..count];
        // The f16 parameters are widened with the same in-register conversion as F16 blocks (TensorPrimitives'
        // Half conversion is far slower here), from the start of the parameter area.
        bool simd = Simd.Enabled;
        ref byte p = ref Unsafe.Add(ref MemoryMarshal.GetReference(block), layout.CodeBytes);
        RowKernels<F16Reader>.Widen(simd, ref p, first, step);
        if (layout.Format != KvFormat.Ternary) RowKernels<F16Reader>.Widen(simd, ref p, groups + first, min);
        switch (layout.Format)
        {
            case KvFormat.Ternary:
                TensorPrimitives.Negate(step, min);
                break;
            case KvFormat.Binary:
                TensorPrimitives.Subtract(min, step, min);
                TensorPrimitives.Multiply(step, 2f, step);
                break;
            default:
                break;
        }
    }

    /// <summary>Sub-byte codes: unpacked to bytes once per block when <see cref="CodeUnpack.Applies"/>, else read packed.</summary>
    private static void ScoresPacked(BlockLayout layout, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> queries, int g, Span<float> scores)
    {
        int codes = n * layout.HeadDim;
        if (CodeUnpack.Applies(layout.Format, codes))
        {
            Span<byte> unpacked = stackalloc byte[CodeUnpack.MaxCodes];
            unpacked = unpacked[..codes];
            CodeUnpack.Unpack(layout.Format, block, unpacked);
            ScoresQuantized<Code8Reader>(layout, block, unpacked, n, queries, g, scores);
            return;
        }
        switch (layout.Format)
        {
            case KvFormat.Int4: ScoresQuantized<Code4Reader>(layout, block, block, n, queries, g, scores); break;
            case KvFormat.Binary: ScoresQuantized<Code1Reader>(layout, block, block, n, queries, g, scores); break;
            default: ScoresQuantized<Code2Reader>(layout, block, block, n, queries, g, scores); break;
        }
    }

    /// <summary>Sub-byte codes: unpacked to bytes once per block when <see cref="CodeUnpack.Applies"/>, else read packed.</summary>
    private static void AccumulatePacked(BlockLayout layout, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> weights, int g, Span<float> acc)
    {
        int codes = n * layout.HeadDim;
        if (CodeUnpack.Applies(layout.Format, codes))
        {
            Span<byte> unpacked = stackalloc byte[CodeUnpack.MaxCodes];
            unpacked = unpacked[..codes];
            CodeUnpack.Unpack(layout.Format, block, unpacked);
            AccumulateQuantized<Code8Reader>(layout, block, unpacked, n, weights, g, acc);
            return;
        }
        switch (layout.Format)
        {
            case KvFormat.Int4: AccumulateQuantized<Code4Reader>(layout, block, block, n, weights, g, acc); break;
            case KvFormat.Binary: AccumulateQuantized<Code1Reader>(layout, block, block, n, weights, g, acc); break;
            default: AccumulateQuantized<Code2Reader>(layout, block, block, n, weights, g, acc); break;
        }
    }

    /// <summary>
    /// Quantized keys; <paramref name="block"/> holds the parameters, <paramref name="codes"/> the codes as
    /// <typeparamref name="R"/> reads them (the block itself, or its codes unpacked to bytes).
    /// </summary>
    private static void ScoresQuantized<R>(BlockLayout layout, ReadOnlySpan<byte> block, ReadOnlySpan<byte> codes, int n, ReadOnlySpan<float> queries, int g, Span<float> scores)
        where R : struct, IElementReader
    {
        int d = layout.HeadDim, gs = layout.GroupSize;
        bool simd = Simd.Enabled;
        ref byte b = ref MemoryMarshal.GetReference(codes);
        if (layout.Axis == QuantAxis.PerChannel)
        {
            int need = (2 + g) * d + g;
            float[]? rented = null;
            Span<float> scratch = need <= StackFloats ? stackalloc float[StackFloats] : (rented = ArrayPool<float>.Shared.Rent(need));
            var min = scratch[..d];
            var step = scratch.Slice(d, d);
            var qs = scratch.Slice(2 * d, g * d);
            var bias = scratch.Slice((2 + g) * d, g);
            for (int t0 = 0; t0 < n; t0 += gs)
            {
                GroupAffine(layout, block, t0 / gs * d, d, min, step);
                for (int i = 0; i < g; i++)
                {
                    var q = queries.Slice(i * d, d);
                    TensorPrimitives.Multiply(q, step, qs.Slice(i * d, d));
                    bias[i] = TensorPrimitives.Dot(q, min);
                }
                int t1 = Math.Min(n, t0 + gs), t = t0;
                if (g >= 4)
                {
                    int full = g / 4 * 4, t0Pairs = t;
                    for (; t + 2 <= t1; t += 2)
                        for (int i = 0; i < full; i += 4)
                        {
                            var (r0, r1) = RowKernels<R>.Dot2Rows4Queries(simd, ref b, t * d, d, qs[(i * d)..], d, d);
                            var bias4 = Vector128.Create(bias.Slice(i, 4));
                            Scatter4(scores, n, i, t, r0 + bias4);
                            Scatter4(scores, n, i, t + 1, r1 + bias4);
                        }
                    for (; t < t1; t++)
                        for (int i = 0; i < full; i += 4)
                            Scatter4(scores, n, i, t, RowKernels<R>.Dot4Queries(simd, ref b, t * d, qs[(i * d)..], d, d) + Vector128.Create(bias.Slice(i, 4)));
                    for (int i = full; i < g; i++)
                        for (int u = t0Pairs; u < t1; u++)
                            scores[i * n + u] = RowKernels<R>.Dot(simd, ref b, u * d, qs.Slice(i * d, d)) + bias[i];
                    continue;
                }
                for (; t + 4 <= t1; t += 4)
                    for (int i = 0; i < g; i++)
                        (RowKernels<R>.Dot4Rows(simd, ref b, t * d, d, qs.Slice(i * d, d)) + Vector128.Create(bias[i])).CopyTo(scores.Slice(i * n + t, 4));
                for (; t < t1; t++)
                    for (int i = 0; i < g; i++)
                        scores[i * n + t] = RowKernels<R>.Dot(simd, ref b, t * d, qs.Slice(i * d, d)) + bias[i];
            }
            if (rented != null) ArrayPool<float>.Shared.Return(rented);
        }
        else
        {
            int perRow = d / gs, groups = n * perRow, need = g * perRow + 2 * groups;
            float[]? rented = null;
            Span<float> scratch = need <= StackFloats ? stackalloc float[StackFloats] : (rented = ArrayPool<float>.Shared.Rent(need));
            var qsum = scratch[..(g * perRow)];
            var min = scratch.Slice(g * perRow, groups);
            var step = scratch.Slice(g * perRow + groups, groups);
            GroupAffine(layout, block, 0, groups, min, step);
            for (int i = 0; i < g; i++)
                for (int j = 0; j < perRow; j++)
                    qsum[i * perRow + j] = TensorPrimitives.Sum(queries.Slice(i * d + j * gs, gs));
            int t = 0;
            if (g >= 4)
            {
                for (; t < n; t++)
                {
                    int i = 0;
                    for (; i + 4 <= g; i += 4)
                    {
                        var s = Vector128<float>.Zero;
                        for (int j = 0; j < perRow; j++)
                        {
                            int k = t * perRow + j;
                            var qs4 = Column4(qsum, perRow, i, j);
                            s += Vector128.Create(min[k]) * qs4 + Vector128.Create(step[k]) * RowKernels<R>.Dot4Queries(simd, ref b, t * d + j * gs, queries[(i * d + j * gs)..], d, gs);
                        }
                        Scatter4(scores, n, i, t, s);
                    }
                    for (; i < g; i++)
                        scores[i * n + t] = TokenScore<R>(simd, ref b, t, queries.Slice(i * d, d), qsum.Slice(i * perRow, perRow), min, step, d, gs);
                }
            }
            for (; t + 4 <= n; t += 4)
                for (int i = 0; i < g; i++)
                {
                    var q = queries.Slice(i * d, d);
                    var s = Vector128<float>.Zero;
                    for (int j = 0; j < perRow; j++)
                    {
                        int k = t * perRow + j;
                        var mn = Vector128.Create(min[k], min[k + perRow], min[k + 2 * perRow], min[k + 3 * perRow]);
                        var st = Vector128.Create(step[k], step[k + perRow], step[k + 2 * perRow], step[k + 3 * perRow]);
                        s += mn * qsum[i * perRow + j] + st * RowKernels<R>.Dot4Rows(simd, ref b, t * d + j * gs, d, q.Slice(j * gs, gs));
                    }
                    s.CopyTo(scores.Slice(i * n + t, 4));
                }
            for (; t < n; t++)
                for (int i = 0; i < g; i++)
                    scores[i * n + t] = TokenScore<R>(simd, ref b, t, queries.Slice(i * d, d), qsum.Slice(i * perRow, perRow), min, step, d, gs);
            if (rented != null) ArrayPool<float>.Shared.Return(rented);
        }
    }

    /// <summary>One query against token <paramref name="t"/> of a per-token block: Σ_j min·Σq + step·(q·codes).</summary>
    private static float TokenScore<R>(bool simd, ref byte b, int t, ReadOnlySpan<float> q, ReadOnlySpan<float> qsum, ReadOnlySpan<float> min, ReadOnlySpan<float> step, int d, int gs)
        where R : struct, IElementReader
    {
        int perRow = qsum.Length;
        float s = 0;
        for (int j = 0; j < perRow; j++)
        {
            int k = t * perRow + j;
            s += min[k] * qsum[j] + step[k] * RowKernels<R>.Dot(simd, ref b, t * d + j * gs, q.Slice(j * gs, gs));
        }
        return s;
    }

    /// <summary>Quantized values; <paramref name="block"/> holds the parameters, <paramref name="codes"/> the codes as <typeparamref name="R"/> reads them.</summary>
    private static void AccumulateQuantized<R>(BlockLayout layout, ReadOnlySpan<byte> block, ReadOnlySpan<byte> codes, int n, ReadOnlySpan<float> weights, int g, Span<float> acc)
        where R : struct, IElementReader
    {
        int d = layout.HeadDim, gs = layout.GroupSize;
        bool simd = Simd.Enabled;
        ref byte b = ref MemoryMarshal.GetReference(codes);
        if (layout.Axis == QuantAxis.PerChannel)
        {
            float[]? rented = null;
            Span<float> scratch = 2 * d <= StackFloats ? stackalloc float[StackFloats] : (rented = ArrayPool<float>.Shared.Rent(2 * d));
            var min = scratch[..d];
            var step = scratch.Slice(d, d);
            for (int t0 = 0; t0 < n; t0 += gs)
            {
                GroupAffine(layout, block, t0 / gs * d, d, min, step);
                int t1 = Math.Min(n, t0 + gs), t = t0;
                if (g >= 4)
                {
                    for (; t < t1; t++)
                    {
                        int i = 0;
                        for (; i + 4 <= g; i += 4)
                            RowKernels<R>.AxpyAffine4Queries(simd, ref b, t * d, Column4(weights, n, i, t), min, step, acc[(i * d)..], d);
                        for (; i < g; i++)
                            RowKernels<R>.AxpyAffine(simd, ref b, t * d, weights[i * n + t], min, step, acc.Slice(i * d, d));
                    }
                    continue;
                }
                for (; t + 4 <= t1; t += 4)
                    for (int i = 0; i < g; i++)
                        RowKernels<R>.AxpyAffine4Rows(simd, ref b, t * d, d, Vector128.Create(weights.Slice(i * n + t, 4)), min, step, acc.Slice(i * d, d));
                for (; t < t1; t++)
                    for (int i = 0; i < g; i++)
                        RowKernels<R>.AxpyAffine(simd, ref b, t * d, weights[i * n + t], min, step, acc.Slice(i * d, d));
            }
            if (rented != null) ArrayPool<float>.Shared.Return(rented);
        }
        else
            AccumulatePerToken<R>(layout, block, codes, n, weights, g, acc);
    }

    /// <summary>
    /// Per-token values: acc_c += Σ_t (w_t·step_t)·code_tc, then + Σ_t w_t·min_t once per channel group (the min term
    /// is the same for every channel of a group, so it costs one add per channel per block instead of one per token).
    /// Every query gets the same operations whether it runs in a block of 4 or alone.
    /// </summary>
    private static void AccumulatePerToken<R>(BlockLayout layout, ReadOnlySpan<byte> block, ReadOnlySpan<byte> codes, int n, ReadOnlySpan<float> weights, int g, Span<float> acc)
        where R : struct, IElementReader
    {
        int d = layout.HeadDim, gs = layout.GroupSize, perRow = d / gs, groups = n * perRow;
        bool simd = Simd.Enabled;
        ref byte b = ref MemoryMarshal.GetReference(codes);
        int need = 2 * groups + 8 * n;
        float[]? rented = null;
        Span<float> scratch = need <= StackFloats ? stackalloc float[StackFloats] : (rented = ArrayPool<float>.Shared.Rent(need));
        var min = scratch[..groups];
        var step = scratch.Slice(groups, groups);
        var coef = scratch.Slice(2 * groups, 4 * n);
        var wt = scratch.Slice(2 * groups + 4 * n, 4 * n);
        GroupAffine(layout, block, 0, groups, min, step);
        // Coefficients w·step and the min term Σ w·min: per lane the same multiply and add, in token order, as the
        // one-query loop below, so both give bit-identical results.
        int i = 0;
        for (; i + 4 <= g; i += 4)
        {
            for (int t = 0; t < n; t++) Column4(weights, n, i, t).CopyTo(wt.Slice(4 * t, 4));
            for (int j = 0; j < perRow; j++)
            {
                var m = Vector128<float>.Zero;
                for (int t = 0; t < n; t++)
                {
                    var w = Vector128.Create(wt.Slice(4 * t, 4));
                    int k = t * perRow + j;
                    (w * step[k]).CopyTo(coef.Slice(4 * t, 4));
                    m += w * min[k];
                }
                ValueKernels<R>.Accumulate4(simd, ref b, j * gs, d, n, coef, acc[(i * d + j * gs)..], d, gs);
                for (int k = 0; k < 4; k++)
                {
                    var a = acc.Slice((i + k) * d + j * gs, gs);
                    TensorPrimitives.Add(a, m[k], a);
                }
            }
        }
        for (; i < g; i++)
            for (int j = 0; j < perRow; j++)
            {
                float m = 0;
                for (int t = 0; t < n; t++)
                {
                    float w = weights[i * n + t];
                    int k = t * perRow + j;
                    coef[t] = w * step[k];
                    m += w * min[k];
                }
                var a = acc.Slice(i * d + j * gs, gs);
                ValueKernels<R>.Accumulate1(simd, ref b, j * gs, d, n, coef, 1, a);
                TensorPrimitives.Add(a, m, a);
            }
        if (rented != null) ArrayPool<float>.Shared.Return(rented);
    }
}
