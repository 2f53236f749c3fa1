using KvSharp.Cache;

namespace KvSharp.Tests.Models;

/// <summary>
/// An <see cref="IKvCache"/> that reproduces the rounding of llama.cpp's CPU attention with its default F16 KV cache,
/// written from ggml's definitions so the recorded llama.cpp logits can be compared at 1e-4 instead of at the size of
/// llama.cpp's own f16 rounding. Keys and values are stored as f16; each query is rounded to f16 (ggml converts the
/// right operand of an f16 dot product to f16, and sums the dot product in double), and ggml's CPU flash attention
/// (ggml_compute_forward_flash_attn_ext_f16, one-chunk path) runs an online softmax whose V accumulator is an f16
/// vector: every step computes acc·ms or acc + v·vs in f32 (fused multiply-add) and rounds back to f16.
/// </summary>
/// <remarks>
/// Tried and rejected against the recorded logits: the non-flash path (f32 softmax, probabilities rounded to f16 for
/// the V product; worst 1.4e-3) and f32-accumulating tiled prefill (worse than one-chunk for every prompt).
/// </remarks>
internal sealed class LlamaCppAttentionCache(int layers, int heads, int kvHeads, int headDim) : IKvCache
{
    private readonly List<Half>[] _keys = Enumerable.Range(0, layers * kvHeads).Select(_ => new List<Half>()).ToArray();
    private readonly List<Half>[] _values = Enumerable.Range(0, layers * kvHeads).Select(_ => new List<Half>()).ToArray();
    private readonly int[] _length = new int[layers];

    public int Length => _length[layers - 1];

    public long ByteCount => 0;

    public void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
    {
        int row = kvHeads * headDim;
        for (int t = 0; t < count; t++)
            for (int g = 0; g < kvHeads; g++)
                for (int c = 0; c < headDim; c++)
                {
                    _keys[layer * kvHeads + g].Add((Half)keys[t * row + g * headDim + c]);
                    _values[layer * kvHeads + g].Add((Half)values[t * row + g * headDim + c]);
                }
        _length[layer] += count;
    }

    public void Attend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, Span<float> output)
    {
        int group = heads / kvHeads, qRow = heads * headDim;
        float scale = 1f / MathF.Sqrt(headDim);
        for (int t = 0; t < count; t++)
            for (int h = 0; h < heads; h++)
            {
                var k = _keys[layer * kvHeads + h / group];
                var v = _values[layer * kvHeads + h / group];
                var q = new Half[headDim];
                for (int c = 0; c < headDim; c++) q[c] = (Half)queries[t * qRow + h * headDim + c];
                var o = output.Slice(t * qRow + h * headDim, headDim);
                int visible = firstPosition + t + 1;
                Flash(q, k, v, visible, scale, o);
            }
    }

    private float Dot(Half[] q, List<Half> k, int token)
    {
        double s = 0;
        for (int c = 0; c < headDim; c++) s += (float)q[c] * (float)k[token * headDim + c];
        return (float)s;
    }

    private void Flash(Half[] q, List<Half> k, List<Half> v, int visible, float scale, Span<float> o)
    {
        var acc = new Half[headDim];
        float m = float.NegativeInfinity, sum = 0;
        for (int j = 0; j < visible; j++)
        {
            float s = Dot(q, k, j) * scale, ms = 1, vs = 1;
            if (s > m)
            {
                float old = m;
                m = s;
                ms = MathF.Exp(old - m);
                for (int c = 0; c < headDim; c++) acc[c] = (Half)((float)acc[c] * ms);
            }
            else vs = MathF.Exp(s - m);
            for (int c = 0; c < headDim; c++) acc[c] = (Half)MathF.FusedMultiplyAdd((float)v[j * headDim + c], vs, (float)acc[c]);
            sum = sum * ms + vs;
        }
        for (int c = 0; c < headDim; c++) o[c] = (float)acc[c] * (1f / sum);
    }

    public void Truncate(int length)
    {
        for (int l = 0; l < layers; l++)
        {
            if (_length[l] <= length) continue;
            for (int g = 0; g < kvHeads; g++)
            {
                _keys[l * kvHeads + g].RemoveRange(length * headDim, (_length[l] - length) * headDim);
                _values[l * kvHeads + g].RemoveRange(length * headDim, (_length[l] - length) * headDim);
            }
            _length[l] = length;
        }
    }

    public void Dispose() { }
}
