using System.Text.Json;
using System.Text.Json.Nodes;

namespace KvSharp.Evaluation.Tasks;

/// <summary>
/// One line of a RULER task file: <c>index</c>, <c>input</c> (context, question and answer prefix in one text),
/// <c>outputs</c> (the strings a correct answer contains) and <c>length</c> (input tokens plus the generation budget).
/// Fields beyond these (e.g. eval_public.jsonl's <c>task</c> and <c>full_cache_answer</c>) are kept in <see cref="Extra"/>.
/// </summary>
/// <param name="Index">Position of the record in its task.</param>
/// <param name="Input">The whole prompt.</param>
/// <param name="Outputs">Expected strings.</param>
/// <param name="Length">Tokens, as RULER counts them.</param>
public sealed record RulerRecord(int Index, string Input, IReadOnlyList<string> Outputs, int Length)
{
    /// <summary>Other fields of the line, by name.</summary>
    public IReadOnlyDictionary<string, JsonNode?> Extra { get; init; } = new Dictionary<string, JsonNode?>();

    /// <summary>A string field of <see cref="Extra"/>, or null.</summary>
    public string? ExtraString(string name) =>
        Extra.TryGetValue(name, out var n) && n is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;

    /// <summary>Reads a JSONL file of records; a bad line is an error naming the file and line.</summary>
    public static IReadOnlyList<RulerRecord> ReadJsonl(string path)
    {
        if (!File.Exists(path)) throw new KvSharpException($"{path}: task file not found");
        var records = new List<RulerRecord>();
        int lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                records.Add(Parse(line, records.Count));
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or KvSharpException)
            {
                throw new KvSharpException($"{path}:{lineNumber}: not a RULER record ({e.Message})", e);
            }
        }
        return records;
    }

    /// <summary>Parses one JSON line; <paramref name="defaultIndex"/> is used when the line has no <c>index</c>.</summary>
    public static RulerRecord Parse(string json, int defaultIndex)
    {
        var obj = JsonNode.Parse(json) as JsonObject ?? throw new KvSharpException("expected a JSON object");
        string input = obj["input"]?.GetValue<string>() ?? throw new KvSharpException("missing 'input'");
        var outputs = obj["outputs"] switch
        {
            JsonArray a => a.Select(x => x?.ToString() ?? throw new KvSharpException("null in 'outputs'")).ToArray(),
            JsonValue v when v.TryGetValue<string>(out var s) => [s],
            null => throw new KvSharpException("missing 'outputs'"),
            _ => throw new KvSharpException("'outputs' must be a list of strings"),
        };
        int index = obj["index"] is JsonValue iv && iv.TryGetValue<int>(out var i) ? i : defaultIndex;
        int length = obj["length"] is JsonValue lv && lv.TryGetValue<int>(out var l) ? l : 0;
        var extra = new Dictionary<string, JsonNode?>();
        foreach (var (k, v) in obj)
            if (k is not ("index" or "input" or "outputs" or "length")) extra[k] = v?.DeepClone();
        return new RulerRecord(index, input, outputs, length) { Extra = extra };
    }

    /// <summary>The JSON line of this record: RULER's four fields, then <see cref="Extra"/>.</summary>
    public string ToJson()
    {
        var obj = new JsonObject
        {
            ["index"] = Index,
            ["input"] = Input,
            ["outputs"] = new JsonArray(Outputs.Select(o => (JsonNode?)JsonValue.Create(o)).ToArray()),
            ["length"] = Length,
        };
        foreach (var (k, v) in Extra) obj[k] = v?.DeepClone();
        return obj.ToJsonString(JsonlFile.Options);
    }
}
