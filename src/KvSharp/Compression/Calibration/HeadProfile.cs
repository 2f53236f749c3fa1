using System.Globalization;
using System.Text;
using System.Text.Json;

namespace KvSharp.Compression.Calibration;

/// <summary>
/// One calibrated number per (layer, KV head) of a model — KVzip's head-level scores (<c>kvsharp calibrate
/// kvzip-heads</c>) or BaKlaVa's head importances (<c>kvsharp calibrate baklava</c>) — as read and written in a JSON file:
/// <code>
/// { "method": "kvzip-heads", "layers": 8, "kv_heads": 2, "scores": [[0.91, 0.12], [0.40, 0.77], ...] }
/// </code>
/// <c>scores</c> holds one row per layer of <c>kv_heads</c> finite numbers (higher = more important). Other top-level
/// members (calibration text, tokens, seed) are kept for the reader and ignored by <see cref="Parse"/>.
/// </summary>
public sealed class HeadProfile
{
    private readonly double[][] _scores;

    /// <summary>Creates a profile from per-layer rows of per-KV-head scores.</summary>
    /// <exception cref="KvSharpException">No layers, rows of different lengths, or a score that is not finite.</exception>
    public HeadProfile(string method, IReadOnlyList<IReadOnlyList<double>> scores)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(method);
        ArgumentNullException.ThrowIfNull(scores);
        Method = method;
        if (scores.Count == 0) throw new KvSharpException($"{method} profile: no layers");
        int heads = scores[0].Count;
        if (heads == 0) throw new KvSharpException($"{method} profile: layer 0 has no KV heads");
        _scores = new double[scores.Count][];
        for (int l = 0; l < scores.Count; l++)
        {
            if (scores[l].Count != heads) throw new KvSharpException($"{method} profile: layer {l} has {scores[l].Count} KV heads, layer 0 has {heads}");
            _scores[l] = scores[l].ToArray();
            for (int h = 0; h < heads; h++)
                if (!double.IsFinite(_scores[l][h])) throw new KvSharpException($"{method} profile: score of layer {l} KV head {h} is not finite");
        }
        KvHeads = heads;
    }

    /// <summary>What computed the scores (<c>kvzip-heads</c>, <c>baklava</c>).</summary>
    public string Method { get; }

    /// <summary>Layers of the model profiled.</summary>
    public int Layers => _scores.Length;

    /// <summary>KV heads per layer.</summary>
    public int KvHeads { get; }

    /// <summary>The score of (layer, KV head).</summary>
    public double this[int layer, int kvHead] => _scores[layer][kvHead];

    /// <summary>Every score, index layer × KvHeads + kvHead (the order of <see cref="HeadScores"/>).</summary>
    public float[] Flatten() => _scores.SelectMany(r => r.Select(x => (float)x)).ToArray();

    /// <summary>Checks the profile was computed for a model of this shape.</summary>
    /// <exception cref="KvSharpException">The layer or KV head counts differ; the message names <paramref name="source"/>.</exception>
    public void CheckShape(int layers, int kvHeads, string source)
    {
        if (Layers != layers || KvHeads != kvHeads)
            throw new KvSharpException($"{Method} profile '{source}': computed for {Layers} layers x {KvHeads} KV heads but the model has {layers} layers x {kvHeads} KV heads (calibrate this model)");
    }

    /// <summary>Reads a profile file, requiring <paramref name="method"/>; errors name the file and the problem.</summary>
    /// <exception cref="KvSharpException">Missing file, malformed JSON, another method's file, or bad scores.</exception>
    public static HeadProfile Load(string path, string method)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new KvSharpException($"{method} profile '{path}': file not found");
        return Parse(File.ReadAllText(path), path, method);
    }

    /// <summary>Parses the JSON text of a profile; <paramref name="source"/> names it in errors.</summary>
    /// <exception cref="KvSharpException">Malformed JSON, another method's file, or bad scores.</exception>
    public static HeadProfile Parse(string json, string source, string method)
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw new KvSharpException($"{method} profile '{source}': not valid JSON ({e.Message})"); }
        using var _ = doc;
        var root = doc.RootElement;
        string Error(string problem) => $"{method} profile '{source}': {problem}";
        if (root.ValueKind != JsonValueKind.Object) throw new KvSharpException(Error("expected a JSON object"));
        if (!root.TryGetProperty("method", out var m) || m.ValueKind != JsonValueKind.String)
            throw new KvSharpException(Error("no \"method\" string"));
        if (m.GetString() != method)
            throw new KvSharpException(Error($"written by '{m.GetString()}', expected a '{method}' profile"));
        if (!root.TryGetProperty("scores", out var rows) || rows.ValueKind != JsonValueKind.Array)
            throw new KvSharpException(Error("no \"scores\" array (one row of KV-head scores per layer)"));
        var scores = new List<IReadOnlyList<double>>();
        int l = 0;
        foreach (var row in rows.EnumerateArray())
        {
            if (row.ValueKind != JsonValueKind.Array) throw new KvSharpException(Error($"scores[{l}] is not an array"));
            var values = new List<double>();
            int h = 0;
            foreach (var x in row.EnumerateArray())
            {
                if (x.ValueKind != JsonValueKind.Number || !x.TryGetDouble(out double v) || !double.IsFinite(v))
                    throw new KvSharpException(Error($"scores[{l}][{h}] = {x.GetRawText()} is not a finite number"));
                values.Add(v);
                h++;
            }
            scores.Add(values);
            l++;
        }
        if (scores.Count == 0) throw new KvSharpException(Error("\"scores\" is empty"));
        CheckCount(root, "layers", scores.Count, Error);
        CheckCount(root, "kv_heads", scores[0].Count, Error);
        try { return new HeadProfile(method, scores); }
        catch (KvSharpException e) { throw new KvSharpException(Error(e.Message)); }
    }

    private static void CheckCount(JsonElement root, string name, int actual, Func<string, string> error)
    {
        if (!root.TryGetProperty(name, out var e)) return;
        if (!e.TryGetInt32(out int n) || n != actual)
            throw new KvSharpException(error($"\"{name}\": {e.GetRawText()} disagrees with the {actual} in \"scores\""));
    }

    /// <summary>
    /// The JSON form that <see cref="Parse"/> reads back; <paramref name="extra"/> adds top-level members
    /// (already-formatted JSON values, e.g. the calibration text and its token count).
    /// </summary>
    public string ToJson(IEnumerable<(string Name, string Json)>? extra = null)
    {
        var sb = new StringBuilder();
        sb.Append("{\n  \"method\": ").Append(JsonSerializer.Serialize(Method)).Append(",\n");
        sb.Append("  \"layers\": ").Append(Layers).Append(", \"kv_heads\": ").Append(KvHeads).Append(",\n");
        foreach (var (name, value) in extra ?? []) sb.Append("  ").Append(JsonSerializer.Serialize(name)).Append(": ").Append(value).Append(",\n");
        sb.Append("  \"scores\": [\n");
        sb.AppendJoin(",\n", _scores.Select(r => "    [" + string.Join(", ", r.Select(x => x.ToString("R", CultureInfo.InvariantCulture))) + "]"));
        sb.Append("\n  ]\n}\n");
        return sb.ToString();
    }

    /// <summary>Writes <see cref="ToJson"/> to <paramref name="path"/> atomically (temp file + rename).</summary>
    public void Save(string path, IEnumerable<(string Name, string Json)>? extra = null) => CalibrationFile.WriteAtomically(path, ToJson(extra));
}
