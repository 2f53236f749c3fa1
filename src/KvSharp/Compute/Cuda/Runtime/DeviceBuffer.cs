using KvSharp.Compute.Cuda.Native;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>
/// A plain device allocation (cuMemAlloc). Copies go through the owning device's stream and wait for
/// it, so host code sees completed data; kernels on the same stream are ordered with them.
/// </summary>
public sealed unsafe class DeviceBuffer : IDisposable
{
    private readonly CudaDevice _device;
    private bool _disposed;

    internal DeviceBuffer(CudaDevice device, long bytes)
    {
        if (bytes <= 0) throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "a device buffer needs a positive size");
        _device = device;
        device.MakeCurrent();
        CudaApi.Check(CudaApi.cuMemAlloc(out ulong pointer, (nuint)bytes), $"cuMemAlloc_v2({bytes} bytes)");
        Pointer = pointer;
        ByteLength = bytes;
    }

    /// <summary>Size in bytes.</summary>
    public long ByteLength { get; }

    /// <summary>Device address of the first byte.</summary>
    internal ulong Pointer { get; }

    /// <summary>Copies <paramref name="source"/> to the buffer at <paramref name="byteOffset"/>.</summary>
    public void Upload<T>(ReadOnlySpan<T> source, long byteOffset = 0) where T : unmanaged
    {
        long bytes = (long)source.Length * sizeof(T);
        CheckRange(byteOffset, bytes);
        if (bytes == 0) return;
        _device.MakeCurrent();
        fixed (T* p = source)
            CudaApi.Check(CudaApi.cuMemcpyHtoDAsync(Pointer + (ulong)byteOffset, p, (nuint)bytes, _device.Stream), "cuMemcpyHtoDAsync_v2");
        _device.Synchronize();
    }

    /// <summary>Copies <paramref name="bytes"/> from host memory at <paramref name="source"/> to the buffer at <paramref name="byteOffset"/>.</summary>
    internal void Upload(byte* source, long bytes, long byteOffset = 0)
    {
        CheckRange(byteOffset, bytes);
        _device.MakeCurrent();
        CudaApi.Check(CudaApi.cuMemcpyHtoDAsync(Pointer + (ulong)byteOffset, source, (nuint)bytes, _device.Stream), "cuMemcpyHtoDAsync_v2");
        _device.Synchronize();
    }

    /// <summary>Copies from the buffer at <paramref name="byteOffset"/> into <paramref name="destination"/>.</summary>
    public void Download<T>(Span<T> destination, long byteOffset = 0) where T : unmanaged
    {
        long bytes = (long)destination.Length * sizeof(T);
        CheckRange(byteOffset, bytes);
        if (bytes == 0) return;
        _device.MakeCurrent();
        fixed (T* p = destination)
        {
            CudaApi.Check(CudaApi.cuMemcpyDtoHAsync(p, Pointer + (ulong)byteOffset, (nuint)bytes, _device.Stream), "cuMemcpyDtoHAsync_v2");
            _device.Synchronize();
        }
    }

    /// <summary>
    /// Copies <paramref name="rows"/> rows of <paramref name="rowElements"/> values, row r starting at byte
    /// <paramref name="byteOffset"/> + r · <paramref name="pitchBytes"/> of the buffer, into <paramref name="destination"/>
    /// ([rows, rowElements], packed): one strided copy instead of one per row (each a round trip to the device).
    /// </summary>
    public void Download2D<T>(Span<T> destination, long byteOffset, long pitchBytes, int rowElements, int rows) where T : unmanaged
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rowElements);
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        long width = (long)rowElements * sizeof(T);
        if (width > pitchBytes) throw new ArgumentOutOfRangeException(nameof(rowElements), $"rows of {width} bytes overlap at a pitch of {pitchBytes}");
        if ((long)destination.Length < (long)rowElements * rows) throw new ArgumentException($"{destination.Length} values cannot hold {rows} rows of {rowElements}", nameof(destination));
        if (width == 0 || rows == 0) return;
        CheckRange(byteOffset, (rows - 1) * pitchBytes + width);
        _device.MakeCurrent();
        fixed (T* p = destination)
        {
            var copy = new CudaApi.Memcpy2D
            {
                SrcMemoryType = CudaApi.MemoryTypeDevice,
                SrcDevice = Pointer + (ulong)byteOffset,
                SrcPitch = (nuint)pitchBytes,
                DstMemoryType = CudaApi.MemoryTypeHost,
                DstHost = p,
                DstPitch = (nuint)width,
                WidthInBytes = (nuint)width,
                Height = (nuint)rows,
            };
            CudaApi.Check(CudaApi.cuMemcpy2DAsync(&copy, _device.Stream), "cuMemcpy2DAsync_v2");
            _device.Synchronize();
        }
    }

    /// <summary>The whole buffer as <typeparamref name="T"/> values.</summary>
    public T[] Download<T>() where T : unmanaged
    {
        var result = new T[ByteLength / sizeof(T)];
        Download<T>(result);
        return result;
    }

    /// <summary>Queues a device-to-device copy of <paramref name="bytes"/> from <paramref name="source"/> (not waited for).</summary>
    internal void CopyFromAsync(DeviceBuffer source, long bytes)
    {
        CheckRange(0, bytes);
        source.CheckRange(0, bytes);
        _device.MakeCurrent();
        CudaApi.Check(CudaApi.cuMemcpyDtoDAsync(Pointer, source.Pointer, (nuint)bytes, _device.Stream), "cuMemcpyDtoDAsync_v2");
    }

    /// <summary>
    /// Fills the buffer with 0x7FC07FC0 words: NaN read as float32, bfloat16 or float16. Tests poison
    /// outputs so an element a kernel forgot to write cannot pass for a correct one.
    /// </summary>
    public void Poison() => Fill32(0x7FC07FC0u);

    /// <summary>Sets every 32-bit word to <paramref name="value"/> (queued on the stream, not waited for).</summary>
    internal void Fill32(uint value)
    {
        _device.MakeCurrent();
        CudaApi.Check(CudaApi.cuMemsetD32Async(Pointer, value, (nuint)(ByteLength / 4), _device.Stream), "cuMemsetD32Async");
    }

    private void CheckRange(long offset, long bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (offset < 0 || bytes < 0 || offset + bytes > ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offset), $"{bytes} bytes at offset {offset} exceed the {ByteLength}-byte device buffer");
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _device.MakeCurrent();
        CudaApi.cuMemFree(Pointer);
    }
}
