using System.Globalization;
using System.Text;
using System.Text.Json;

namespace KvSharp.Compression.Quantization;

/// <summary>
/// A KVTuner precision configuration: one <see cref="KvTunerPair"/> per layer. File format (JSON):
/// <code>
/// { "layers": ["KV8", "K8V4", "KV4", ...] }
/// </code>
/// one entry per model layer, in layer order; an entry may also be an object <c>{"key_bits": 8, "value_bits": 4}</c>.
/// Other top-level members (the search writes "mean_bits", "loss", "pareto_front", ...) are ignored.
/// </summary>
public sealed class KvTunerConfig
{
    /// <summary>Creates a configuration from per-layer pairs.</summary>
    /// <exception cref="KvSharpException">No layers, or a pair outside the candidate set.</exception>
    public KvTunerConfig(IReadOnlyList<KvTunerPair> layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (layers.Count == 0) throw new KvSharpException("KVTuner config: no layers");
        foreach (var p in layers)
            if (!KvTunerPair.Candidates.Contains(p)) throw new KvSharpException($"KVTuner config: K{p.KeyBits}V{p.ValueBits} is not a KVTuner candidate ({Names})");
        Layers = layers.ToArray();
    }

    /// <summary>The pair of each layer.</summary>
    public IReadOnlyList<KvTunerPair> Layers { get; }

    /// <summary>Mean equivalent bits over layers.</summary>
    public double MeanBits => Layers.Average(p => p.MeanBits);

    private static string Names => string.Join(", ", KvTunerPair.Candidates);

    /// <summary>Reads a configuration file; errors name the file and the bad entry.</summary>
    /// <exception cref="KvSharpException">Missing file, malformed JSON, no "layers" array, or an unknown pair.</exception>
    public static KvTunerConfig Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new KvSharpException($"KVTuner config '{path}': file not found");
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses the JSON text of a configuration; <paramref name="source"/> names it in errors.</summary>
    /// <exception cref="KvSharpException">Malformed JSON, no "layers" array, or an unknown pair.</exception>
    public static KvTunerConfig Parse(string json, string source)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw new KvSharpException($"KVTuner config '{source}': not valid JSON ({e.Message})"); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("layers", out var layers) || layers.ValueKind != JsonValueKind.Array)
            throw new KvSharpException($"KVTuner config '{source}': expected an object with a \"layers\" array (e.g. {{\"layers\": [\"KV8\", \"K8V4\"]}})");
        var pairs = new List<KvTunerPair>();
        int i = 0;
        foreach (var e in layers.EnumerateArray())
        {
            pairs.Add(ParseEntry(e) ?? throw new KvSharpException($"KVTuner config '{source}': layers[{i}] = {e.GetRawText()} is not one of {Names} (or {{\"key_bits\": K, \"value_bits\": V}} with such a pair)"));
            i++;
        }
        if (pairs.Count == 0) throw new KvSharpException($"KVTuner config '{source}': \"layers\" is empty");
        return new KvTunerConfig(pairs);
    }

    private static KvTunerPair? ParseEntry(JsonElement e)
    {
        if (e.ValueKind == JsonValueKind.String) return KvTunerPair.TryParse(e.GetString()!);
        if (e.ValueKind == JsonValueKind.Object && e.TryGetProperty("key_bits", out var k) && e.TryGetProperty("value_bits", out var v)
            && k.TryGetInt32(out int kb) && v.TryGetInt32(out int vb))
        {
            var p = new KvTunerPair(kb, vb);
            return KvTunerPair.Candidates.Contains(p) ? p : null;
        }
        return null;
    }

    /// <summary>The JSON form (<c>{"layers": [...], "mean_bits": ...}</c>) that <see cref="Parse"/> reads back.</summary>
    public string ToJson()
    {
        var sb = new StringBuilder();
        sb.Append("{\"layers\": [").AppendJoin(", ", Layers.Select(p => $"\"{p}\"")).Append("], \"mean_bits\": ")
          .Append(MeanBits.ToString("R", CultureInfo.InvariantCulture)).Append('}');
        return sb.ToString();
    }

    /// <summary>Checks the configuration has one pair per layer of a model with <paramref name="layers"/> layers.</summary>
    /// <exception cref="KvSharpException">The counts differ; the message names <paramref name="source"/>.</exception>
    public void CheckLayers(int layers, string source)
    {
        if (Layers.Count != layers)
            throw new KvSharpException($"KVTuner config '{source}': {Layers.Count} layer entries but the model has {layers} layers");
    }
}
