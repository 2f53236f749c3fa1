using System.Text.Json;

namespace KvSharp.Formats.SafeTensors;

/// <summary>
/// One safetensors file, memory-mapped: an 8-byte little-endian header length, a JSON header
/// describing each tensor (dtype, shape, byte range), then the raw data. Tensors are exposed as
/// <see cref="TensorView"/>s pointing into the mapping, so nothing is copied onto the managed heap.
/// Only floating-point dtypes the engine computes with (F32, F16, BF16) are accepted.
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    /// <summary>Largest header accepted; real headers are kilobytes, so anything bigger is corruption.</summary>
    private const long MaxHeaderBytes = 100L << 20;

    private readonly MappedFile _file;
    private readonly Dictionary<string, TensorView> _tensors = new(StringComparer.Ordinal);
    private readonly List<TensorView> _tensorList = new();
    private readonly Dictionary<string, string> _metadata = new(StringComparer.Ordinal);

    private SafeTensorsFile(MappedFile file) { _file = file; }

    /// <summary>The file's path.</summary>
    public string Path => _file.Path;

    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<TensorView> Tensors => _tensorList;

    /// <summary>The free-form string metadata of the header ("__metadata__"), possibly empty.</summary>
    public IReadOnlyDictionary<string, string> Metadata => _metadata;

    /// <summary>Offset of the first data byte (8 + header length).</summary>
    public long DataOffset { get; private set; }

    /// <summary>Opens and validates a safetensors file; errors name the file and the problem.</summary>
    public static SafeTensorsFile Open(string path)
    {
        var file = new SafeTensorsFile(new MappedFile(path));
        try
        {
            file.Parse();
            return file;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>The tensor named <paramref name="name"/> (the file's own name), or null.</summary>
    public TensorView? FindTensor(string name) => _tensors.GetValueOrDefault(name);

    /// <summary>Maps a safetensors dtype string to a <see cref="GgmlType"/>, or null when unsupported.</summary>
    public static GgmlType? MapDType(string dtype) => dtype switch
    {
        "F32" => GgmlType.F32,
        "F16" => GgmlType.F16,
        "BF16" => GgmlType.BF16,
        _ => null,
    };

    private void Parse()
    {
        if (_file.Length < 8)
            throw new ModelFormatException(Path, $"truncated: {_file.Length} bytes, too short for the 8-byte header length");
        ulong headerLen = BitConverter.ToUInt64(_file.Span(0, 8));
        if (headerLen < 2 || headerLen > MaxHeaderBytes)
            throw new ModelFormatException(Path, $"not a safetensors file: header length {headerLen} is implausible");
        if ((long)headerLen > _file.Length - 8)
            throw new ModelFormatException(Path, $"truncated: the header claims {headerLen} bytes but the file has only {_file.Length - 8} after the length prefix");
        DataOffset = 8 + (long)headerLen;
        long dataBytes = _file.Length - DataOffset;

        JsonDocument doc;
        try
        {
            // The header is small (kilobytes), so copying it for the JSON parser is cheap; the data stays mapped.
            doc = JsonDocument.Parse(_file.Span(8, (int)headerLen).ToArray());
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(Path, $"corrupt header: invalid JSON ({e.Message})");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(Path, "corrupt header: the JSON header is not an object");
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__")
                {
                    ReadMetadata(entry.Value);
                    continue;
                }
                var view = ReadTensor(entry.Name, entry.Value, dataBytes);
                if (!_tensors.TryAdd(view.Name, view))
                    throw new ModelFormatException(Path, $"duplicate tensor name '{view.Name}'");
                _tensorList.Add(view);
            }
        }
    }

    private void ReadMetadata(JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(Path, "corrupt header: __metadata__ is not an object");
        foreach (var kv in value.EnumerateObject())
            _metadata[kv.Name] = kv.Value.ValueKind == JsonValueKind.String ? kv.Value.GetString()! : kv.Value.GetRawText();
    }

    private TensorView ReadTensor(string name, JsonElement info, long dataBytes)
    {
        ModelFormatException Bad(string problem) => new(Path, $"tensor '{name}': {problem}");
        if (info.ValueKind != JsonValueKind.Object) throw Bad("header entry is not an object");
        if (!info.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String)
            throw Bad("missing 'dtype'");
        string dtype = dtypeEl.GetString()!;
        var type = MapDType(dtype) ?? throw Bad($"unsupported dtype {dtype} (supported: F32, F16, BF16)");

        if (!info.TryGetProperty("shape", out var shapeEl) || shapeEl.ValueKind != JsonValueKind.Array)
            throw Bad("missing 'shape'");
        var shape = new long[shapeEl.GetArrayLength()];
        long elements = 1;
        int i = 0;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0 || dim > (1L << 40))
                throw Bad($"invalid dimension {d.GetRawText()} in shape");
            shape[i++] = dim;
            elements = dim == 0 ? 0 : elements > long.MaxValue / dim ? throw Bad("shape overflows") : elements * dim;
        }

        if (!info.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw Bad("missing or malformed 'data_offsets' (expected [begin, end])");
        if (!offEl[0].TryGetInt64(out long begin) || !offEl[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw Bad($"invalid data_offsets {offEl.GetRawText()}");
        long expected = elements * GgmlTypeInfo.BlockBytes(type);
        if (end - begin != expected)
            throw Bad($"data_offsets {offEl.GetRawText()} span {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dtype} needs {expected}");
        if (end > dataBytes)
            throw new ModelFormatException(Path, $"truncated: tensor '{name}' needs data bytes {begin}..{end} but the data section has {dataBytes}");
        return new TensorView(name, type, shape, _file.Pointer + DataOffset + begin, expected);
    }

    /// <inheritdoc />
    public void Dispose() => _file.Dispose();
}
