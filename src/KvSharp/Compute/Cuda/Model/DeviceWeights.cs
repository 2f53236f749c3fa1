using KvSharp.Compute.Cpu;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>A weight matrix [rows, cols] resident on the device in one element type.</summary>
internal sealed class DeviceMatrix(DeviceBuffer buffer, int rows, int cols, DeviceWeightType type) : IDisposable
{
    public void Dispose() => buffer.Dispose();

    public DeviceBuffer Buffer => buffer;
    public int Rows => rows;
    public int Cols => cols;
    public DeviceWeightType Type => type;
    public ulong Pointer => buffer.Pointer;
}

/// <summary>
/// Moves a model's tensors to the device: matrices in the requested element type (a tensor already in
/// that type is copied byte for byte; anything else is widened to float on the host, row by row, and
/// narrowed with round-to-nearest-even), norm weights and biases as float32.
/// </summary>
internal static unsafe class DeviceWeights
{
    private const long StagingBytes = 64L << 20;

    public static DeviceMatrix Matrix(CudaDevice device, TensorView t, int rows, int cols, DeviceWeightType type) =>
        Stacked(device, [(t, rows)], cols, type);

    /// <summary>
    /// Tensors stacked row-wise into one device matrix (Q, K and V as one [q + 2·kv, hidden] matrix; gate and up
    /// as one [2·ffn, hidden]): one kernel then reads them all, instead of one launch per tensor.
    /// </summary>
    public static DeviceMatrix Stacked(CudaDevice device, IReadOnlyList<(TensorView Tensor, int Rows)> parts, int cols, DeviceWeightType type)
    {
        int elementBytes = CudaKernels.ElementBytes(type);
        int totalRows = parts.Sum(p => p.Rows);
        var buffer = device.Allocate((long)totalRows * cols * elementBytes);
        try
        {
            long offset = 0;
            foreach (var (t, rows) in parts)
            {
                Upload(buffer, offset, t, rows, cols, type);
                offset += (long)rows * cols * elementBytes;
            }
            return new DeviceMatrix(buffer, totalRows, cols, type);
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }

    private static void Upload(DeviceBuffer buffer, long byteOffset, TensorView t, int rows, int cols, DeviceWeightType type)
    {
        if (t.Rows != rows || t.Cols != cols)
            throw new ModelFormatException(t.Name, $"tensor has shape [{string.Join(", ", t.Shape)}], expected [{rows}, {cols}]");
        int elementBytes = CudaKernels.ElementBytes(type);
        long bytes = (long)rows * cols * elementBytes;
        if (t.Type == StoredAs(type))
        {
            for (long off = 0; off < bytes; off += StagingBytes)
                buffer.Upload(t.Data + off, Math.Min(StagingBytes, bytes - off), byteOffset + off);
            return;
        }
        if (!Dequantize.IsSupported(t.Type)) throw new ModelFormatException(t.Name, $"tensor type {t.Type} cannot be moved to the GPU");
        int rowsPerChunk = (int)Math.Max(1, StagingBytes / ((long)cols * elementBytes));
        var staging = new byte[(long)Math.Min(rowsPerChunk, rows) * cols * elementBytes];
        for (int r0 = 0; r0 < rows; r0 += rowsPerChunk)
        {
            int n = Math.Min(rowsPerChunk, rows - r0);
            Parallel.For(0, n, () => new float[cols], (i, _, row) =>
            {
                Dequantize.Row(t, r0 + i, row);
                Narrow(row, staging.AsSpan(i * cols * elementBytes, cols * elementBytes), type);
                return row;
            }, _ => { });
            buffer.Upload<byte>(staging.AsSpan(0, n * cols * elementBytes), byteOffset + (long)r0 * cols * elementBytes);
        }
    }

    public static DeviceBuffer Vector(CudaDevice device, ReadOnlySpan<float> values)
    {
        var buffer = device.Allocate(values.Length * sizeof(float));
        buffer.Upload(values);
        return buffer;
    }

    /// <summary>The file type whose bytes are already <paramref name="type"/>'s.</summary>
    private static GgmlType StoredAs(DeviceWeightType type) => type switch
    {
        DeviceWeightType.BF16 => GgmlType.BF16,
        DeviceWeightType.F16 => GgmlType.F16,
        _ => GgmlType.F32,
    };

    /// <summary>float → device element type, round-to-nearest-even (NaN stays NaN).</summary>
    internal static void Narrow(ReadOnlySpan<float> src, Span<byte> dst, DeviceWeightType type)
    {
        switch (type)
        {
            case DeviceWeightType.F32:
                System.Runtime.InteropServices.MemoryMarshal.AsBytes(src).CopyTo(dst);
                break;
            case DeviceWeightType.F16:
                var h = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(dst);
                for (int i = 0; i < src.Length; i++) h[i] = (Half)src[i];
                break;
            default:
                var b = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(dst);
                for (int i = 0; i < src.Length; i++) b[i] = ToBFloat16(src[i]);
                break;
        }
    }

    internal static ushort ToBFloat16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }
}
