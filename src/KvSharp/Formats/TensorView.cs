namespace KvSharp.Formats;

/// <summary>
/// A tensor stored in a model file, seen in place (memory-mapped) or in memory owned elsewhere.
/// <see cref="Shape"/> is outermost-first (numpy order): a linear layer's weight is
/// [out_features, in_features], stored row by row, each row in <see cref="Type"/>'s blocks.
/// </summary>
public sealed unsafe class TensorView
{
    /// <summary>Creates a view; <paramref name="data"/> must stay valid while the view is used.</summary>
    public TensorView(string name, GgmlType type, long[] shape, byte* data, long byteLength)
    {
        Name = name; Type = type; Shape = shape; Data = data; ByteLength = byteLength;
    }

    /// <summary>The tensor's name in its file.</summary>
    public string Name { get; }

    /// <summary>Element storage type.</summary>
    public GgmlType Type { get; }

    /// <summary>Dimensions, outermost first.</summary>
    public long[] Shape { get; }

    /// <summary>Address of the first byte.</summary>
    public byte* Data { get; }

    /// <summary>Stored size in bytes.</summary>
    public long ByteLength { get; }

    /// <summary>Number of elements.</summary>
    public long ElementCount
    {
        get { long n = 1; foreach (var d in Shape) n *= d; return n; }
    }

    /// <summary>Innermost dimension (elements per row).</summary>
    public long Cols => Shape.Length == 0 ? 1 : Shape[^1];

    /// <summary>Product of all but the innermost dimension.</summary>
    public long Rows => Cols == 0 ? 0 : ElementCount / Cols;

    /// <summary>The raw bytes (for tensors under 2 GiB).</summary>
    public ReadOnlySpan<byte> Bytes => new(Data, checked((int)ByteLength));

    /// <inheritdoc />
    public override string ToString() => $"{Name} {Type} [{string.Join(", ", Shape)}]";
}
