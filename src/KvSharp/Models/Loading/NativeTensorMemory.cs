using System.Runtime.InteropServices;

namespace KvSharp.Models.Loading;

/// <summary>Native, 64-byte-aligned allocations for generated tensors, all freed together on dispose.</summary>
public sealed unsafe class NativeTensorMemory : IDisposable
{
    /// <summary>Alignment of every allocation (a cache line, and enough for AVX-512 loads).</summary>
    public const int Alignment = 64;

    private readonly List<IntPtr> _blocks = new();

    /// <summary>Total bytes allocated.</summary>
    public long Bytes { get; private set; }

    /// <summary>Allocates <paramref name="bytes"/> bytes (uninitialized) owned by this object.</summary>
    public byte* Allocate(long bytes)
    {
        var p = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), Alignment);
        lock (_blocks) { _blocks.Add((IntPtr)p); Bytes += bytes; }
        return p;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_blocks)
        {
            foreach (var p in _blocks) NativeMemory.AlignedFree((void*)p);
            _blocks.Clear();
            Bytes = 0;
        }
    }
}
