using System.Text;

namespace KvSharp.Formats.Gguf;

/// <summary>
/// Builds a GGUF v3 file: metadata of any GGUF value type and tensors aligned to
/// <see cref="Alignment"/>. The file is written to a temporary name and renamed into place, so a
/// failed or interrupted write never leaves a half-written model under the final name.
/// </summary>
/// <remarks>
/// Metadata value types follow the .NET type of the value: byte, sbyte, ushort, short, uint,
/// int, float, bool, string, ulong, long, double, typed arrays of those (string[] for strings),
/// and object[] for arrays of arrays (each element itself an array).
/// </remarks>
public sealed unsafe partial class GgufWriter
{
    private const uint Magic = 0x46554747;
    private readonly List<KeyValuePair<string, object>> _metadata = new();
    private readonly List<Pending> _tensors = new();

    /// <summary>A writer whose tensor data is aligned to <paramref name="alignment"/> bytes (a power of two; GGUF's default is 32).</summary>
    public GgufWriter(int alignment = 32)
    {
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentException($"alignment {alignment} is not a power of two", nameof(alignment));
        Alignment = alignment;
        // Readers assume 32 unless told otherwise.
        if (alignment != 32) Set("general.alignment", (uint)alignment);
    }

    /// <summary>Alignment of tensor data.</summary>
    public int Alignment { get; }

    /// <summary>Metadata in the order it will be written.</summary>
    public IReadOnlyList<KeyValuePair<string, object>> Metadata => _metadata;

    /// <summary>Sets (or replaces, keeping its position) metadata <paramref name="key"/>; the GGUF type follows the value's .NET type.</summary>
    public GgufWriter Set(string key, object value)
    {
        TypeOf(value, key); // reject unsupported types now rather than at Write
        if (key == "general.alignment" && Convert.ToInt64(value, System.Globalization.CultureInfo.InvariantCulture) != Alignment)
            throw new ArgumentException($"general.alignment {value} contradicts the writer's alignment {Alignment}");
        int i = _metadata.FindIndex(kv => kv.Key == key);
        if (i >= 0) _metadata[i] = new(key, value);
        else _metadata.Add(new(key, value));
        return this;
    }

    /// <summary>Adds a tensor whose bytes live in <paramref name="data"/> (row-major, shape outermost first).</summary>
    public GgufWriter AddTensor(string name, GgmlType type, long[] shape, byte[] data)
    {
        Check(name, type, shape, data.LongLength);
        _tensors.Add(new Pending(name, type, shape, IntPtr.Zero, data.LongLength, data));
        return this;
    }

    /// <summary>
    /// Adds <paramref name="tensor"/> (under <paramref name="name"/>, default its own name); its
    /// memory must stay valid until <see cref="Write"/> returns.
    /// </summary>
    public GgufWriter AddTensor(TensorView tensor, string? name = null)
    {
        name ??= tensor.Name;
        Check(name, tensor.Type, tensor.Shape, tensor.ByteLength);
        _tensors.Add(new Pending(name, tensor.Type, tensor.Shape, (IntPtr)tensor.Data, tensor.ByteLength, null));
        return this;
    }

    private void Check(string name, GgmlType type, long[] shape, long bytes)
    {
        if (_tensors.Any(t => t.Name == name)) throw new ArgumentException($"duplicate tensor '{name}'");
        if (shape.Length is 0 or > 4) throw new ArgumentException($"tensor '{name}' has {shape.Length} dimensions (1..4 allowed)");
        if (shape[^1] % GgmlTypeInfo.BlockSize(type) != 0)
            throw new ArgumentException($"tensor '{name}': rows of {shape[^1]} are not a multiple of {type}'s block size");
        long expected = shape.Aggregate(1L, (a, b) => a * b) / GgmlTypeInfo.BlockSize(type) * GgmlTypeInfo.BlockBytes(type);
        if (bytes != expected) throw new ArgumentException($"tensor '{name}' has {bytes} bytes, its shape and type need {expected}");
    }

    /// <summary>Writes the file atomically (temporary file in the same folder, then rename).</summary>
    public void Write(string path)
    {
        string full = Path.GetFullPath(path);
        string tmp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                WriteTo(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch (Exception e)
        {
            try { File.Delete(tmp); } catch (IOException) { }
            if (e is IOException or UnauthorizedAccessException)
                throw new KvSharpException($"{path}: cannot write GGUF file ({e.Message})", e);
            throw;
        }
    }

    private void WriteTo(Stream s)
    {
        var w = new BinaryWriter(s, Encoding.UTF8, leaveOpen: true);
        w.Write(Magic);
        w.Write(3u);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);
        foreach (var (key, value) in _metadata)
        {
            WriteString(w, key);
            var type = TypeOf(value, key);
            w.Write((uint)type);
            WriteValue(w, type, value, key);
        }
        long offset = 0;
        var offsets = new long[_tensors.Count];
        for (int i = 0; i < _tensors.Count; i++)
        {
            var t = _tensors[i];
            offsets[i] = offset;
            WriteString(w, t.Name);
            w.Write((uint)t.Shape.Length);
            for (int d = t.Shape.Length - 1; d >= 0; d--) w.Write((ulong)t.Shape[d]); // GGUF lists the innermost dimension first
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offset = Align(offset + t.Bytes);
        }
        w.Flush();
        Pad(s);
        long dataStart = s.Position;
        for (int i = 0; i < _tensors.Count; i++)
        {
            var t = _tensors[i];
            if (t.Managed != null) s.Write(t.Managed);
            else
            {
                for (long done = 0; done < t.Bytes;)
                {
                    int n = (int)Math.Min(t.Bytes - done, 1 << 30);
                    s.Write(new ReadOnlySpan<byte>(t.Data + done, n));
                    done += n;
                }
            }
            if (i < _tensors.Count - 1) Pad(s);
            else if (s.Position - dataStart != offsets[i] + t.Bytes) throw new InvalidOperationException("tensor offsets out of step");
        }
    }

    private long Align(long x) => (x + Alignment - 1) / Alignment * Alignment;

    private void Pad(Stream s)
    {
        long pad = Align(s.Position) - s.Position;
        for (long i = 0; i < pad; i++) s.WriteByte(0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)b.Length);
        w.Write(b);
    }

    private static GgufValueType TypeOf(object v, string key) => v switch
    {
        byte => GgufValueType.UInt8,
        sbyte => GgufValueType.Int8,
        ushort => GgufValueType.UInt16,
        short => GgufValueType.Int16,
        uint => GgufValueType.UInt32,
        int => GgufValueType.Int32,
        float => GgufValueType.Float32,
        bool => GgufValueType.Bool,
        string => GgufValueType.String,
        ulong => GgufValueType.UInt64,
        long => GgufValueType.Int64,
        double => GgufValueType.Float64,
        Array a when a.Rank == 1 => ElementTypeOf(a, key) is var _ ? GgufValueType.Array : default,
        _ => throw new ArgumentException($"metadata '{key}': values of type {v.GetType().Name} cannot be stored in GGUF"),
    };

    private static GgufValueType ElementTypeOf(Array a, string key)
    {
        var t = a.GetType().GetElementType()!;
        if (t == typeof(object)) return GgufValueType.Array;
        if (t == typeof(string)) return GgufValueType.String;
        if (t == typeof(byte)) return GgufValueType.UInt8;
        if (t == typeof(sbyte)) return GgufValueType.Int8;
        if (t == typeof(ushort)) return GgufValueType.UInt16;
        if (t == typeof(short)) return GgufValueType.Int16;
        if (t == typeof(uint)) return GgufValueType.UInt32;
        if (t == typeof(int)) return GgufValueType.Int32;
        if (t == typeof(float)) return GgufValueType.Float32;
        if (t == typeof(bool)) return GgufValueType.Bool;
        if (t == typeof(ulong)) return GgufValueType.UInt64;
        if (t == typeof(long)) return GgufValueType.Int64;
        if (t == typeof(double)) return GgufValueType.Float64;
        throw new ArgumentException($"metadata '{key}': arrays of {t.Name} cannot be stored in GGUF");
    }

    private static void WriteValue(BinaryWriter w, GgufValueType type, object v, string key)
    {
        switch (type)
        {
            case GgufValueType.UInt8: w.Write((byte)v); break;
            case GgufValueType.Int8: w.Write((sbyte)v); break;
            case GgufValueType.UInt16: w.Write((ushort)v); break;
            case GgufValueType.Int16: w.Write((short)v); break;
            case GgufValueType.UInt32: w.Write((uint)v); break;
            case GgufValueType.Int32: w.Write((int)v); break;
            case GgufValueType.Float32: w.Write((float)v); break;
            case GgufValueType.Bool: w.Write((byte)((bool)v ? 1 : 0)); break;
            case GgufValueType.String: WriteString(w, (string)v); break;
            case GgufValueType.UInt64: w.Write((ulong)v); break;
            case GgufValueType.Int64: w.Write((long)v); break;
            case GgufValueType.Float64: w.Write((double)v); break;
            case GgufValueType.Array:
                {
                    var a = (Array)v;
                    var et = ElementTypeOf(a, key);
                    w.Write((uint)et);
                    w.Write((ulong)a.Length);
                    foreach (var e in a)
                    {
                        if (et == GgufValueType.Array && e is not Array)
                            throw new ArgumentException($"metadata '{key}': an array of arrays holds a {e?.GetType().Name ?? "null"}");
                        WriteValue(w, et, e!, key);
                    }
                    break;
                }
            default: throw new ArgumentException($"metadata '{key}': unsupported type {type}");
        }
    }

    private sealed record Pending(string Name, GgmlType Type, long[] Shape, IntPtr Address, long Bytes, byte[]? Managed)
    {
        public byte* Data => (byte*)Address;
    }
}
