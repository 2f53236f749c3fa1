namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>
/// Device memory a decode attention launch asks L2 to fetch while it runs (prefetch_l2 in common.cuh): weights the kernels
/// after it read, which would otherwise come from device memory only once those kernels start, while a latency-bound
/// attention leaves device memory mostly idle. Up to two ranges (e.g. a layer's output projection and the start of its
/// gate/up matrix), cut into one slice per grid block. Default: none. A hint only: no result depends on it.
/// </summary>
internal readonly record struct L2Prefetch
{
    /// <summary>
    /// The ranges [<paramref name="first"/>, + <paramref name="firstBytes"/>) and [<paramref name="second"/>, +
    /// <paramref name="secondBytes"/>): 16-byte aligned addresses (any device allocation is), sizes rounded down to 16 bytes
    /// (the bulk prefetch's unit).
    /// </summary>
    public L2Prefetch(ulong first, long firstBytes, ulong second = 0, long secondBytes = 0)
    {
        if (firstBytes < 0 || secondBytes < 0) throw new ArgumentOutOfRangeException(nameof(firstBytes), "an L2 prefetch range has a non-negative size");
        if ((first | second) % 16 != 0) throw new ArgumentException("L2 prefetch ranges start at 16-byte aligned addresses", nameof(first));
        (First, FirstBytes, Second, SecondBytes) = (first, firstBytes & ~15L, second, secondBytes & ~15L);
    }

    /// <summary>Start of the first range.</summary>
    public ulong First { get; }

    /// <summary>Bytes of the first range (a multiple of 16; 0: none).</summary>
    public long FirstBytes { get; }

    /// <summary>Start of the second range.</summary>
    public ulong Second { get; }

    /// <summary>Bytes of the second range (a multiple of 16; 0: none).</summary>
    public long SecondBytes { get; }
}
