using System.Runtime.InteropServices;
using KvSharp.Formats;

namespace KvSharp.Tests.Compute;

/// <summary>A weight tensor in native memory for kernel tests.</summary>
internal sealed unsafe class TestTensor : IDisposable
{
    private readonly byte* _p;

    public TestTensor(GgmlType type, int rows, int cols, ReadOnlySpan<byte> data)
    {
        _p = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(1, data.Length), 64);
        data.CopyTo(new Span<byte>(_p, data.Length));
        View = new TensorView("test.weight", type, new long[] { rows, cols }, _p, data.Length);
    }

    public TensorView View { get; }

    public void Dispose() => NativeMemory.AlignedFree(_p);

    /// <summary>Random floats with per-32-block varying magnitude (so block scales differ).</summary>
    public static float[] RandomValues(Random rng, int count, double scale = 1.0)
    {
        var v = new float[count];
        double blockScale = 1;
        for (int i = 0; i < count; i++)
        {
            if (i % 32 == 0) blockScale = scale * (0.1 + rng.NextDouble());
            v[i] = (float)((rng.NextDouble() * 2 - 1) * blockScale);
        }
        return v;
    }
}
