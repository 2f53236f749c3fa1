using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Models;

namespace KvSharp.Tests.Reference;

/// <summary>Weight accessors for <see cref="ReferenceTransformer"/>.</summary>
public static class ReferenceWeights
{
    /// <summary>
    /// Converts every tensor of <paramref name="weights"/> to double now (each row through
    /// <see cref="Dequantize.Row"/> to float, then widened), so the accessor stays valid after the
    /// weights are disposed. Tensors are row-major with the file's shape ([out, in] for linear layers).
    /// </summary>
    public static Func<string, double[]?> FromModelWeights(ModelWeights weights)
    {
        var all = new Dictionary<string, double[]>(StringComparer.Ordinal);
        foreach (var (name, view) in weights.Tensors) all[name] = ToDouble(view);
        return FromDictionary(all);
    }

    /// <summary>An accessor over a name → values dictionary (null for names it does not hold).</summary>
    public static Func<string, double[]?> FromDictionary(IReadOnlyDictionary<string, double[]> tensors) =>
        name => tensors.GetValueOrDefault(name);

    /// <summary>All elements of <paramref name="view"/> as double, row by row.</summary>
    public static double[] ToDouble(TensorView view)
    {
        long rows = view.Rows, cols = view.Cols;
        var result = new double[checked(rows * cols)];
        var buf = new float[cols];
        for (long r = 0; r < rows; r++)
        {
            Dequantize.Row(view, r, buf);
            for (long c = 0; c < cols; c++) result[r * cols + c] = buf[c];
        }
        return result;
    }
}
