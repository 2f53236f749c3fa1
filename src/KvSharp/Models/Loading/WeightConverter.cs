using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Models.Loading;

/// <summary>
/// Re-stores a model's weights in another type (e.g. a bf16 checkpoint as Q8_0), in native memory:
/// matrices whose rows fit the type's blocks are converted, vectors (norms, biases) become F32.
/// Used to compare engines on one model in several weight types.
/// </summary>
public static unsafe class WeightConverter
{
    /// <summary>A copy of <paramref name="source"/> with matrices in <paramref name="type"/>.</summary>
    public static ModelWeights Convert(ModelWeights source, GgmlType type)
    {
        if (!Quantize.IsSupported(type)) throw new KvSharpException($"cannot convert weights to {type}");
        var memory = new NativeTensorMemory();
        try
        {
            var tensors = new Dictionary<string, TensorView>(StringComparer.Ordinal);
            foreach (var (name, t) in source.Tensors)
            {
                var target = t.Shape.Length >= 2 && t.Cols % GgmlTypeInfo.BlockSize(type) == 0 ? type : GgmlType.F32;
                long rowBytes = GgmlTypeInfo.RowBytes(target, t.Cols);
                byte* dst = memory.Allocate(rowBytes * t.Rows);
                var row = new float[t.Cols];
                for (long r = 0; r < t.Rows; r++)
                {
                    Dequantize.Row(t, r, row);
                    Quantize.Row(target, row, new Span<byte>(dst + r * rowBytes, (int)rowBytes));
                }
                tensors[name] = new TensorView(name, target, t.Shape, dst, rowBytes * t.Rows);
            }
            return new ModelWeights(source.Config, $"{source.Source} as {type}", tensors, memory);
        }
        catch
        {
            memory.Dispose();
            throw;
        }
    }
}
