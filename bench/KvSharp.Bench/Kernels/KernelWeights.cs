using System.Runtime.InteropServices;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Bench.Kernels;

/// <summary>A random weight matrix of a given type in native memory, plus activations, for kernel benchmarks.</summary>
internal sealed unsafe class KernelWeights : IDisposable
{
    private readonly byte* _p;

    public KernelWeights(GgmlType type, int rows, int cols, int n, int seed = 1)
    {
        var rng = new Random(seed);
        long rb = GgmlTypeInfo.RowBytes(type, cols);
        Bytes = rb * rows;
        _p = (byte*)NativeMemory.AlignedAlloc((nuint)Bytes, 64);
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++) row[c] = (float)(rng.NextDouble() * 2 - 1) * 0.05f;
            Quantize.Row(type, row, new Span<byte>(_p + r * rb, (int)rb));
        }
        View = new TensorView($"bench.{type}", type, new long[] { rows, cols }, _p, Bytes);
        X = new float[n * cols];
        for (int i = 0; i < X.Length; i++) X[i] = (float)(rng.NextDouble() * 2 - 1);
        Y = new float[n * rows];
        N = n;
    }

    public TensorView View { get; }
    public long Bytes { get; }
    public float[] X { get; }
    public float[] Y { get; }
    public int N { get; }

    public void Run() => KvSharp.Compute.Cpu.Kernels.MatMul(View, X, Y, N);

    public void Dispose() => NativeMemory.AlignedFree(_p);
}
