using System.Numerics.Tensors;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// One query row of ggml's CPU flash attention over an F16 KV cache, the one-chunk path of
/// ggml_compute_forward_flash_attn_ext_f16 (<see cref="CpuNumerics.LlamaCpp"/>).
/// </summary>
/// <remarks>
/// The query is rounded to f16; each score is ggml_vec_dot_f16 of key and query times the scale; an online softmax keeps
/// the running maximum M and sum S in float and the weighted sum of values in an <b>f16</b> vector, updated element by
/// element in float and rounded back (a new maximum rescales it by expf(Mold − M); otherwise v · expf(s − M) is added with
/// one fused multiply-add); S = S · ms + vs unfused; the output is acc · (1/S). llama.cpp takes this path while a batch has
/// fewer than 64 query rows and the KV view (padded to 256 cells) is under 512 cells; its tiled and split-KV paths, taken
/// past those sizes, round differently and are not reproduced.
/// </remarks>
public static class GgmlFlashAttention
{
    /// <summary>
    /// Attends <paramref name="query"/> ([headDim], float) over the first <paramref name="count"/> rows of
    /// <paramref name="keys"/> and <paramref name="values"/> ([rows, headDim] f16 values, given widened to float: the
    /// widening is exact, and done once per KV head for all the queries that read it), writing [headDim] to
    /// <paramref name="output"/>. <paramref name="scratch"/> holds at least 2 · headDim floats.
    /// </summary>
    public static void OneChunk(ReadOnlySpan<float> query, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count,
        float scale, Span<float> scratch, Span<float> output)
    {
        int hd = query.Length;
        var q = scratch[..hd];
        var acc = scratch.Slice(hd, hd);
        GgmlElementwise.RoundToHalf(query, q);
        acc.Clear();
        float max = float.NegativeInfinity, sum = 0;
        for (int j = 0; j < count; j++)
        {
            float s = GgmlOrderDot.VecDotF16(keys.Slice(j * hd, hd), q) * scale;
            float ms = 1, vs = 1;
            if (s > max)
            {
                float old = max;
                max = s;
                ms = MathF.Exp(old - max);
                for (int i = 0; i < hd; i++) acc[i] = GgmlElementwise.RoundToHalf(acc[i] * ms);
            }
            else vs = MathF.Exp(s - max);
            var v = values.Slice(j * hd, hd);
            for (int i = 0; i < hd; i++) acc[i] = GgmlElementwise.RoundToHalf(MathF.FusedMultiplyAdd(v[i], vs, acc[i]));
            sum = sum * ms + vs;
        }
        float inv = sum == 0 ? 0 : 1.0f / sum;
        TensorPrimitives.Multiply(acc, inv, output);
    }
}
