using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace KvSharp.Cache;

/// <summary>
/// Causal softmax attention of the query heads sharing one KV head over contiguous float32 keys and
/// values ([tokens, headDim] each). Every key and value row is loaded once for the whole GQA group,
/// so grouped-query attention costs the KV bytes once, not once per query head.
/// </summary>
internal static class FullPrecisionAttention
{
    /// <summary>
    /// out[h] = softmax_j(q[h]·k[j] · scale) · v[j] over j &lt; <paramref name="visible"/>, for the
    /// <paramref name="heads"/> query rows of <paramref name="q"/> (each headDim long, contiguous).
    /// <paramref name="scores"/> needs heads × visible floats.
    /// </summary>
    public static void Attend(ReadOnlySpan<float> q, int heads, ReadOnlySpan<float> keys, ReadOnlySpan<float> values,
        int visible, int headDim, float scale, Span<float> scores, Span<float> output)
    {
        var s = scores.Slice(0, heads * visible);
        for (int h0 = 0; h0 < heads; h0 += 4)
        {
            int hn = Math.Min(4, heads - h0);
            Scores(q.Slice(h0 * headDim, hn * headDim), hn, keys, visible, headDim, scale, s.Slice(h0 * visible, hn * visible));
        }
        for (int h = 0; h < heads; h++)
        {
            var row = s.Slice(h * visible, visible);
            float max = TensorPrimitives.Max(row);
            TensorPrimitives.Subtract(row, max, row);
            TensorPrimitives.Exp(row, row);
            float inv = 1f / TensorPrimitives.Sum(row);
            TensorPrimitives.Multiply(row, inv, row);
        }
        var o = output.Slice(0, heads * headDim);
        o.Clear();
        if (Vector256.IsHardwareAccelerated && headDim % 8 == 0)
            WeightedValues256(s, heads, values, visible, headDim, o);
        else
            for (int h = 0; h < heads; h++)
                for (int j = 0; j < visible; j++)
                    TensorPrimitives.MultiplyAdd(values.Slice(j * headDim, headDim), s[h * visible + j], o.Slice(h * headDim, headDim), o.Slice(h * headDim, headDim));
    }

    /// <summary>Scores of up to 4 query heads against each key, loading every key once.</summary>
    private static void Scores(ReadOnlySpan<float> q, int hn, ReadOnlySpan<float> keys, int visible, int headDim, float scale, Span<float> scores)
    {
        if (!Vector256.IsHardwareAccelerated || headDim % 8 != 0)
        {
            for (int h = 0; h < hn; h++)
                for (int j = 0; j < visible; j++)
                    scores[h * visible + j] = TensorPrimitives.Dot(q.Slice(h * headDim, headDim), keys.Slice(j * headDim, headDim)) * scale;
            return;
        }
        ref float qr = ref Unsafe.AsRef(in q[0]);
        ref float kr = ref Unsafe.AsRef(in keys[0]);
        int q1 = hn > 1 ? headDim : 0, q2 = hn > 2 ? 2 * headDim : 0, q3 = hn > 3 ? 3 * headDim : 0;
        for (int j = 0; j < visible; j++)
        {
            ref float k = ref Unsafe.Add(ref kr, j * headDim);
            var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            for (int c = 0; c < headDim; c += 8)
            {
                var kv = Vector256.LoadUnsafe(ref k, (nuint)c);
                a0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref qr, (nuint)c), kv, a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref qr, (nuint)(q1 + c)), kv, a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref qr, (nuint)(q2 + c)), kv, a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref qr, (nuint)(q3 + c)), kv, a3);
            }
            // Missing heads (hn < 4) alias head 0's row: computed and dropped, which keeps the loop branch-free.
            scores[j] = Vector256.Sum(a0) * scale;
            if (hn > 1) scores[visible + j] = Vector256.Sum(a1) * scale;
            if (hn > 2) scores[2 * visible + j] = Vector256.Sum(a2) * scale;
            if (hn > 3) scores[3 * visible + j] = Vector256.Sum(a3) * scale;
        }
    }

    /// <summary>out[h] += p[h, j] · v[j], each value row loaded once for all heads.</summary>
    private static void WeightedValues256(ReadOnlySpan<float> p, int heads, ReadOnlySpan<float> values, int visible, int headDim, Span<float> output)
    {
        ref float vr = ref Unsafe.AsRef(in values[0]);
        ref float or = ref output[0];
        for (int j = 0; j < visible; j++)
        {
            ref float v = ref Unsafe.Add(ref vr, j * headDim);
            for (int c = 0; c < headDim; c += 8)
            {
                var vv = Vector256.LoadUnsafe(ref v, (nuint)c);
                for (int h = 0; h < heads; h++)
                {
                    ref float o = ref Unsafe.Add(ref or, h * headDim + c);
                    Vector256.FusedMultiplyAdd(Vector256.Create(p[h * visible + j]), vv, Vector256.LoadUnsafe(ref o)).StoreUnsafe(ref o);
                }
            }
        }
    }
}
