using System.Text.Json;

namespace KvSharp.Formats.SafeTensors;

/// <summary>
/// A model's safetensors weights: a single file, or the shards listed by a Hugging Face
/// <c>model.safetensors.index.json</c> ("weight_map": tensor name → shard file). Every shard is
/// memory-mapped; tensor names are the file's own (Hugging Face) names.
/// </summary>
public sealed class SafeTensorsSet : IDisposable
{
    /// <summary>The standard name of a sharded checkpoint's index.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>The standard name of a single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";

    private readonly List<SafeTensorsFile> _files = new();
    private readonly Dictionary<string, TensorView> _tensors = new(StringComparer.Ordinal);

    private SafeTensorsSet(string path) { Path = path; }

    /// <summary>The index or single file this set was opened from.</summary>
    public string Path { get; }

    /// <summary>The opened files (one per shard).</summary>
    public IReadOnlyList<SafeTensorsFile> Files => _files;

    /// <summary>All tensors by their stored name.</summary>
    public IReadOnlyDictionary<string, TensorView> Tensors => _tensors;

    /// <summary>
    /// Opens a <c>.safetensors</c> file, a <c>.safetensors.index.json</c> index, or a directory
    /// holding either (the index wins when both exist).
    /// </summary>
    public static SafeTensorsSet Open(string path)
    {
        if (Directory.Exists(path))
        {
            string index = System.IO.Path.Combine(path, IndexFileName);
            string single = System.IO.Path.Combine(path, SingleFileName);
            if (File.Exists(index)) path = index;
            else if (File.Exists(single)) path = single;
            else throw new ModelFormatException(path, $"no {IndexFileName} or {SingleFileName} in this directory");
        }
        var set = new SafeTensorsSet(path);
        try
        {
            if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) set.OpenIndex(path);
            else set.Add(SafeTensorsFile.Open(path), null);
            return set;
        }
        catch
        {
            set.Dispose();
            throw;
        }
    }

    /// <summary>The tensor with stored name <paramref name="name"/>, or null.</summary>
    public TensorView? Find(string name) => _tensors.GetValueOrDefault(name);

    private void OpenIndex(string indexPath)
    {
        if (!File.Exists(indexPath)) throw new ModelFormatException(indexPath, "file not found");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(indexPath)); }
        catch (JsonException e) { throw new ModelFormatException(indexPath, $"invalid JSON ({e.Message})"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object ||
                !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(indexPath, "missing 'weight_map' object");
            string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
            // Shard name → tensors the index places there (checked after opening the shard).
            var byShard = new Dictionary<string, List<string>>(StringComparer.Ordinal);
            foreach (var kv in map.EnumerateObject())
            {
                if (kv.Value.ValueKind != JsonValueKind.String)
                    throw new ModelFormatException(indexPath, $"weight_map entry '{kv.Name}' is not a file name");
                string shard = kv.Value.GetString()!;
                if (shard.Contains('/') || shard.Contains('\\') || shard.Contains(".."))
                    throw new ModelFormatException(indexPath, $"weight_map entry '{kv.Name}' names '{shard}', not a file beside the index");
                if (!byShard.TryGetValue(shard, out var list)) byShard[shard] = list = new List<string>();
                list.Add(kv.Name);
            }
            if (byShard.Count == 0) throw new ModelFormatException(indexPath, "weight_map is empty");
            foreach (var (shard, names) in byShard.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                string shardPath = System.IO.Path.Combine(dir, shard);
                if (!File.Exists(shardPath))
                    throw new ModelFormatException(indexPath, $"shard '{shard}' listed in weight_map is missing ({shardPath})");
                var file = SafeTensorsFile.Open(shardPath);
                Add(file, names);
            }
        }
    }

    private void Add(SafeTensorsFile file, List<string>? expected)
    {
        _files.Add(file);
        if (expected != null)
        {
            foreach (var name in expected)
                if (file.FindTensor(name) == null)
                    throw new ModelFormatException(file.Path, $"tensor '{name}' is listed for this shard in {System.IO.Path.GetFileName(Path)} but not stored in it");
        }
        foreach (var t in file.Tensors)
        {
            if (!_tensors.TryAdd(t.Name, t))
                throw new ModelFormatException(file.Path, $"tensor '{t.Name}' is stored in more than one shard");
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
