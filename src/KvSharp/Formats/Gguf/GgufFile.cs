using System.Text;

namespace KvSharp.Formats.Gguf;

/// <summary>
/// A GGUF (v2/v3) model file: its metadata and tensors, memory-mapped. Metadata values are
/// boxed .NET values (byte, sbyte, ushort, short, uint, int, float, bool, string, ulong, long,
/// double) and arrays are typed .NET arrays of those (string[] for string arrays, object[] for
/// nested arrays).
/// </summary>
public sealed unsafe class GgufFile : IDisposable
{
    private const uint Magic = 0x46554747; // "GGUF" little-endian
    private readonly MappedFile _file;
    private readonly Dictionary<string, TensorView> _tensors = new(StringComparer.Ordinal);

    private GgufFile(MappedFile file) { _file = file; }

    /// <summary>The file's path.</summary>
    public string Path => _file.Path;

    /// <summary>Format version (2 or 3).</summary>
    public uint Version { get; private set; }

    /// <summary>Metadata key/values in file order.</summary>
    public IReadOnlyDictionary<string, object> Metadata => _metadata;
    private readonly Dictionary<string, object> _metadata = new(StringComparer.Ordinal);

    /// <summary>Tensors in file order.</summary>
    public IReadOnlyList<TensorView> Tensors => _tensorList;
    private readonly List<TensorView> _tensorList = new();

    /// <summary>Data alignment (general.alignment, default 32).</summary>
    public int Alignment { get; private set; } = 32;

    /// <summary>Offset of the tensor data section.</summary>
    public long DataOffset { get; private set; }

    /// <summary>Opens and validates a GGUF file; errors name the file and the problem.</summary>
    public static GgufFile Open(string path)
    {
        var mapped = new MappedFile(path);
        var gguf = new GgufFile(mapped);
        try
        {
            gguf.Parse();
            return gguf;
        }
        catch
        {
            gguf.Dispose();
            throw;
        }
    }

    /// <summary>Whether the file starts with the GGUF magic.</summary>
    public static bool LooksLikeGguf(string path)
    {
        try
        {
            using var fs = File.OpenRead(path);
            Span<byte> b = stackalloc byte[4];
            return fs.Read(b) == 4 && BitConverter.ToUInt32(b) == Magic;
        }
        catch (IOException) { return false; }
    }

    /// <summary>The tensor named <paramref name="name"/>, or null.</summary>
    public TensorView? FindTensor(string name) => _tensors.GetValueOrDefault(name);

    /// <summary>A metadata value converted to <typeparamref name="T"/>, or <paramref name="fallback"/> when absent.</summary>
    public T Get<T>(string key, T fallback)
    {
        if (!_metadata.TryGetValue(key, out var v)) return fallback;
        return ConvertValue<T>(key, v);
    }

    /// <summary>A required metadata value converted to <typeparamref name="T"/>.</summary>
    public T Require<T>(string key)
    {
        if (!_metadata.TryGetValue(key, out var v))
            throw new ModelFormatException(Path, $"missing required metadata key '{key}'");
        return ConvertValue<T>(key, v);
    }

    private T ConvertValue<T>(string key, object v)
    {
        try
        {
            if (v is T t) return t;
            if (typeof(T) == typeof(string[]) || typeof(T).IsArray) return (T)v;
            return (T)Convert.ChangeType(v, typeof(T), System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is InvalidCastException or FormatException or OverflowException)
        {
            throw new ModelFormatException(Path, $"metadata key '{key}' has type {v.GetType().Name}, expected {typeof(T).Name}");
        }
    }

    private void Parse()
    {
        var r = new Reader(_file);
        // A prefix of the magic in a short file is a truncated GGUF, anything else is not a GGUF at all.
        var magic = BitConverter.GetBytes(Magic);
        var head = _file.Span(0, (int)Math.Min(4, _file.Length));
        if (!head.SequenceEqual(magic.AsSpan(0, head.Length)))
            throw new ModelFormatException(Path, "not a GGUF file (bad magic)");
        if (_file.Length < 24)
            throw new ModelFormatException(Path, $"truncated: {_file.Length} bytes, shorter than the 24-byte GGUF header");
        r.U32();
        Version = r.U32();
        if (Version is < 2 or > 3)
            throw new ModelFormatException(Path, $"unsupported GGUF version {Version} (supported: 2, 3)");
        ulong tensorCount = r.U64();
        ulong kvCount = r.U64();
        if (tensorCount > 1_000_000 || kvCount > 1_000_000)
            throw new ModelFormatException(Path, $"corrupt header: {tensorCount} tensors, {kvCount} metadata keys");

        for (ulong i = 0; i < kvCount; i++)
        {
            string key = r.Str();
            var type = (GgufValueType)r.U32();
            _metadata[key] = ReadValue(ref r, type, key);
        }
        if (_metadata.TryGetValue("general.alignment", out var al))
        {
            Alignment = al is uint or int or ulong or long or ushort or short or byte or sbyte
                ? (int)Math.Clamp(Convert.ToInt64(al, System.Globalization.CultureInfo.InvariantCulture), -1, int.MaxValue)
                : throw new ModelFormatException(Path, $"general.alignment has type {al.GetType().Name}, expected an integer");
            if (Alignment <= 0 || (Alignment & (Alignment - 1)) != 0)
                throw new ModelFormatException(Path, $"general.alignment = {Alignment} is not a power of two");
        }

        var infos = new List<(string Name, long[] Ne, GgmlType Type, ulong Offset)>();
        for (ulong i = 0; i < tensorCount; i++)
        {
            string name = r.Str();
            uint nDims = r.U32();
            if (nDims is 0 or > 4) throw new ModelFormatException(Path, $"tensor '{name}' has {nDims} dimensions (1..4 allowed)");
            var ne = new long[nDims];
            for (int d = 0; d < nDims; d++)
            {
                ulong dim = r.U64();
                if (dim > (1UL << 40)) throw new ModelFormatException(Path, $"tensor '{name}' has an impossible dimension {dim}");
                ne[d] = (long)dim;
            }
            var type = (GgmlType)r.U32();
            if (!GgmlTypeInfo.IsKnown(type))
                throw new ModelFormatException(Path, $"tensor '{name}' has unknown tensor type {(uint)type}");
            ulong off = r.U64();
            infos.Add((name, ne, type, off));
        }
        long pos = r.Position;
        DataOffset = (pos + Alignment - 1) / Alignment * Alignment;

        foreach (var (name, ne, type, off) in infos)
        {
            if (off % (ulong)Alignment != 0)
                throw new ModelFormatException(Path, $"tensor '{name}' offset {off} is not aligned to {Alignment}");
            if (ne[0] % GgmlTypeInfo.BlockSize(type) != 0)
                throw new ModelFormatException(Path, $"tensor '{name}': row of {ne[0]} elements is not a multiple of {type}'s block size {GgmlTypeInfo.BlockSize(type)}");
            long elements = 1;
            foreach (var d in ne)
            {
                // Dimensions come from the file: their product may overflow before the size check.
                if (d != 0 && elements > long.MaxValue / d / GgmlTypeInfo.BlockBytes(type))
                    throw new ModelFormatException(Path, $"tensor '{name}' has an impossible shape [{string.Join(", ", ne.Reverse())}]");
                elements *= d;
            }
            long bytes = elements / GgmlTypeInfo.BlockSize(type) * GgmlTypeInfo.BlockBytes(type);
            long start = DataOffset + (long)off;
            if (start + bytes > _file.Length)
                throw new ModelFormatException(Path, $"truncated: tensor '{name}' needs bytes {start}..{start + bytes} but the file has {_file.Length}");
            var shape = ne.Reverse().ToArray();
            var view = new TensorView(name, type, shape, _file.Pointer + start, bytes);
            if (!_tensors.TryAdd(name, view)) throw new ModelFormatException(Path, $"duplicate tensor name '{name}'");
            _tensorList.Add(view);
        }
    }

    private object ReadValue(ref Reader r, GgufValueType type, string key) => type switch
    {
        GgufValueType.UInt8 => r.Byte(),
        GgufValueType.Int8 => (sbyte)r.Byte(),
        GgufValueType.UInt16 => r.U16(),
        GgufValueType.Int16 => (short)r.U16(),
        GgufValueType.UInt32 => r.U32(),
        GgufValueType.Int32 => (int)r.U32(),
        GgufValueType.Float32 => BitConverter.Int32BitsToSingle((int)r.U32()),
        GgufValueType.Bool => r.Byte() != 0,
        GgufValueType.String => r.Str(),
        GgufValueType.UInt64 => r.U64(),
        GgufValueType.Int64 => (long)r.U64(),
        GgufValueType.Float64 => BitConverter.Int64BitsToDouble((long)r.U64()),
        GgufValueType.Array => ReadArray(ref r, key),
        _ => throw new ModelFormatException(Path, $"metadata key '{key}' has unknown value type {(uint)type}"),
    };

    private object ReadArray(ref Reader r, string key)
    {
        var et = (GgufValueType)r.U32();
        ulong n = r.U64();
        if (n > (ulong)(_file.Length - r.Position))
            throw new ModelFormatException(Path, $"metadata array '{key}' claims {n} elements, more than the file holds");
        int count = (int)n;
        switch (et)
        {
            case GgufValueType.String: { var a = new string[count]; for (int i = 0; i < count; i++) a[i] = r.Str(); return a; }
            case GgufValueType.UInt8: { var a = new byte[count]; for (int i = 0; i < count; i++) a[i] = r.Byte(); return a; }
            case GgufValueType.Int8: { var a = new sbyte[count]; for (int i = 0; i < count; i++) a[i] = (sbyte)r.Byte(); return a; }
            case GgufValueType.UInt16: { var a = new ushort[count]; for (int i = 0; i < count; i++) a[i] = r.U16(); return a; }
            case GgufValueType.Int16: { var a = new short[count]; for (int i = 0; i < count; i++) a[i] = (short)r.U16(); return a; }
            case GgufValueType.UInt32: { var a = new uint[count]; for (int i = 0; i < count; i++) a[i] = r.U32(); return a; }
            case GgufValueType.Int32: { var a = new int[count]; for (int i = 0; i < count; i++) a[i] = (int)r.U32(); return a; }
            case GgufValueType.Float32: { var a = new float[count]; for (int i = 0; i < count; i++) a[i] = BitConverter.Int32BitsToSingle((int)r.U32()); return a; }
            case GgufValueType.Bool: { var a = new bool[count]; for (int i = 0; i < count; i++) a[i] = r.Byte() != 0; return a; }
            case GgufValueType.UInt64: { var a = new ulong[count]; for (int i = 0; i < count; i++) a[i] = r.U64(); return a; }
            case GgufValueType.Int64: { var a = new long[count]; for (int i = 0; i < count; i++) a[i] = (long)r.U64(); return a; }
            case GgufValueType.Float64: { var a = new double[count]; for (int i = 0; i < count; i++) a[i] = BitConverter.Int64BitsToDouble((long)r.U64()); return a; }
            case GgufValueType.Array: { var a = new object[count]; for (int i = 0; i < count; i++) a[i] = ReadArray(ref r, key); return a; }
            default: throw new ModelFormatException(Path, $"metadata array '{key}' has unknown element type {(uint)et}");
        }
    }

    /// <inheritdoc />
    public void Dispose() => _file.Dispose();

    /// <summary>Bounds-checked little-endian cursor over the mapped file.</summary>
    private ref struct Reader
    {
        private readonly MappedFile _f;
        public long Position;
        public Reader(MappedFile f) { _f = f; Position = 0; }
        private ReadOnlySpan<byte> Take(int n) { var s = _f.Span(Position, n); Position += n; return s; }
        public byte Byte() => Take(1)[0];
        public ushort U16() => BitConverter.ToUInt16(Take(2));
        public uint U32() => BitConverter.ToUInt32(Take(4));
        public ulong U64() => BitConverter.ToUInt64(Take(8));
        public string Str()
        {
            ulong n = U64();
            if (n > 1 << 30 || (long)n > _f.Length - Position)
                throw new ModelFormatException(_f.Path, $"truncated or corrupt: string of {n} bytes at offset {Position}");
            return Encoding.UTF8.GetString(Take((int)n));
        }
    }
}
