using KvSharp.Cache;
using KvSharp.Tests.Reference;

namespace KvSharp.Tests.Models;

/// <summary>
/// An <see cref="IKvCache"/> that stores keys and values as f16 and attends with llama.cpp's CPU flash attention
/// (<see cref="GgmlCpu.FlashAttentionF16"/>: f16 queries, f16 value accumulator), so the engine's float32 projections can be
/// compared with llama.cpp's recorded logits through llama.cpp's own attention rounding.
/// </summary>
internal sealed class LlamaCppAttentionCache(int layers, int heads, int kvHeads, int headDim) : IKvCache
{
    private readonly List<float>[] _keys = Enumerable.Range(0, layers * kvHeads).Select(_ => new List<float>()).ToArray();
    private readonly List<float>[] _values = Enumerable.Range(0, layers * kvHeads).Select(_ => new List<float>()).ToArray();
    private readonly int[] _length = new int[layers];

    public int Length => _length[layers - 1];

    public long ByteCount => 0;

    public void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count)
    {
        int row = kvHeads * headDim;
        for (int t = 0; t < count; t++)
            for (int g = 0; g < kvHeads; g++)
            {
                GgmlCpu.AppendHalf(_keys[layer * kvHeads + g], keys.Slice(t * row + g * headDim, headDim));
                GgmlCpu.AppendHalf(_values[layer * kvHeads + g], values.Slice(t * row + g * headDim, headDim));
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
                int cell = layer * kvHeads + h / group;
                GgmlCpu.FlashAttentionF16(queries.Slice(t * qRow + h * headDim, headDim), GgmlCpu.AsSpan(_keys[cell]), GgmlCpu.AsSpan(_values[cell]),
                    firstPosition + t + 1, scale, output.Slice(t * qRow + h * headDim, headDim));
            }
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
