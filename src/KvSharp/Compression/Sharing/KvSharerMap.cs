using System.Globalization;
using System.Text;
using System.Text.Json;
using KvSharp.Compression.Calibration;

namespace KvSharp.Compression.Sharing;

/// <summary>One cross-layer share: <see cref="Layer"/> reads <see cref="Source"/>'s keys and values (Source &lt; Layer).</summary>
public readonly record struct LayerShare(int Layer, int Source)
{
    /// <summary><c>layer&lt;-source</c>.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Layer}<-{Source}");
}

/// <summary>
/// KVSharer's layer map (<c>kvsharp calibrate kvsharer</c>): the accepted shares in the order the search accepted
/// them, so that the first N form the map with N shared layers. File format (JSON):
/// <code>
/// { "method": "kvsharer", "layers": 8, "shares": [{"layer": 6, "source": 0}, {"layer": 7, "source": 2}] }
/// </code>
/// Each share's source is an earlier layer; a layer is shared at most once and never both shared and a source.
/// Other top-level members (the search's trials, threshold, calibration text) are ignored by <see cref="Parse"/>.
/// </summary>
public sealed class KvSharerMap
{
    /// <summary>The method name written in the file.</summary>
    public const string Method = "kvsharer";

    /// <summary>Creates a map for a model of <paramref name="layers"/> layers.</summary>
    /// <exception cref="KvSharpException">A share outside the layers, a source not earlier than its layer, a layer shared twice, or a shared layer used as a source.</exception>
    public KvSharerMap(int layers, IReadOnlyList<LayerShare> shares)
    {
        ArgumentNullException.ThrowIfNull(shares);
        if (layers < 1) throw new KvSharpException($"kvsharer map: {layers} layers");
        var shared = new HashSet<int>();
        foreach (var s in shares)
        {
            if (s.Layer < 1 || s.Layer >= layers || s.Source < 0 || s.Source >= s.Layer)
                throw new KvSharpException($"kvsharer map: share {s} must have 0 ≤ source < layer < {layers}");
            if (!shared.Add(s.Layer)) throw new KvSharpException($"kvsharer map: layer {s.Layer} is shared twice");
        }
        foreach (var s in shares)
            if (shared.Contains(s.Source)) throw new KvSharpException($"kvsharer map: share {s} reads layer {s.Source}, which itself stores nothing");
        Layers = layers;
        Shares = shares.ToArray();
    }

    /// <summary>Layers of the model calibrated.</summary>
    public int Layers { get; }

    /// <summary>The shares, in acceptance order.</summary>
    public IReadOnlyList<LayerShare> Shares { get; }

    /// <summary>Checks the map was made for a model of <paramref name="layers"/> layers.</summary>
    /// <exception cref="KvSharpException">The counts differ; the message names <paramref name="source"/>.</exception>
    public void CheckLayers(int layers, string source)
    {
        if (Layers != layers)
            throw new KvSharpException($"kvsharer map '{source}': computed for {Layers} layers but the model has {layers} (calibrate this model)");
    }

    /// <summary>Reads a map file; errors name the file and the problem.</summary>
    /// <exception cref="KvSharpException">Missing file, malformed JSON or an invalid map.</exception>
    public static KvSharerMap Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new KvSharpException($"kvsharer map '{path}': file not found");
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses the JSON text of a map; <paramref name="source"/> names it in errors.</summary>
    /// <exception cref="KvSharpException">Malformed JSON or an invalid map.</exception>
    public static KvSharerMap Parse(string json, string source)
    {
        ArgumentNullException.ThrowIfNull(json);
        string Error(string problem) => $"kvsharer map '{source}': {problem}";
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw new KvSharpException(Error($"not valid JSON ({e.Message})")); }
        using var _ = doc;
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new KvSharpException(Error("expected a JSON object"));
        if (!root.TryGetProperty("method", out var m) || m.ValueKind != JsonValueKind.String || m.GetString() != Method)
            throw new KvSharpException(Error($"expected \"method\": \"{Method}\""));
        if (!root.TryGetProperty("layers", out var l) || !l.TryGetInt32(out int layers))
            throw new KvSharpException(Error("no \"layers\" count (the model's layers)"));
        if (!root.TryGetProperty("shares", out var arr) || arr.ValueKind != JsonValueKind.Array)
            throw new KvSharpException(Error("no \"shares\" array (e.g. [{\"layer\": 6, \"source\": 0}])"));
        var shares = new List<LayerShare>();
        int i = 0;
        foreach (var e in arr.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty("layer", out var a) || !a.TryGetInt32(out int layer)
                || !e.TryGetProperty("source", out var b) || !b.TryGetInt32(out int src))
                throw new KvSharpException(Error($"shares[{i}] = {e.GetRawText()} is not {{\"layer\": L, \"source\": S}}"));
            shares.Add(new LayerShare(layer, src));
            i++;
        }
        try { return new KvSharerMap(layers, shares); }
        catch (KvSharpException e) { throw new KvSharpException(Error(e.Message["kvsharer map: ".Length..])); }
    }

    /// <summary>The JSON form that <see cref="Parse"/> reads back; <paramref name="extra"/> adds top-level members (formatted JSON values).</summary>
    public string ToJson(IEnumerable<(string Name, string Json)>? extra = null)
    {
        var sb = new StringBuilder();
        sb.Append("{\n  \"method\": \"").Append(Method).Append("\",\n  \"layers\": ").Append(Layers).Append(",\n");
        sb.Append("  \"shares\": [").AppendJoin(", ", Shares.Select(s => $"{{\"layer\": {s.Layer}, \"source\": {s.Source}}}")).Append(']');
        foreach (var (name, value) in extra ?? []) sb.Append(",\n  ").Append(JsonSerializer.Serialize(name)).Append(": ").Append(value);
        sb.Append("\n}\n");
        return sb.ToString();
    }

    /// <summary>Writes <see cref="ToJson"/> to <paramref name="path"/> atomically.</summary>
    public void Save(string path, IEnumerable<(string Name, string Json)>? extra = null) => CalibrationFile.WriteAtomically(path, ToJson(extra));
}
