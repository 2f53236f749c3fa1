using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace KvSharp.Evaluation;

/// <summary>
/// Converts a YAML document into the equivalent JSON text, so a YAML config goes through exactly the JSON
/// deserializer and checks of its JSON form. Plain scalars are typed by the YAML 1.2 core schema (null, booleans,
/// integers, floats); quoted and block scalars stay strings. Each JSON path remembers the YAML line it came from,
/// so a deserializer error can name the line of the YAML file.
/// </summary>
public sealed partial class YamlToJson
{
    private readonly Dictionary<string, Mark> _marks = new(StringComparer.Ordinal);

    private YamlToJson(string json) { Json = json; }

    /// <summary>The JSON text.</summary>
    public string Json { get; private set; }

    /// <summary>
    /// Converts <paramref name="yaml"/> (one document). <paramref name="source"/> names the text in errors; a syntax
    /// error, a duplicate key, a non-scalar key, an alias or an infinite/NaN number is a <see cref="KvSharpException"/>
    /// naming the source, line and column.
    /// </summary>
    public static YamlToJson Convert(string yaml, string source)
    {
        ArgumentNullException.ThrowIfNull(yaml);
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(yaml));
        }
        catch (YamlException e)
        {
            throw new KvSharpException($"{source}:{e.Start.Line}:{e.Start.Column}: not valid YAML ({Inner(e)})", e);
        }
        catch (InvalidOperationException e)
        {
            // YamlDotNet's scanner throws this (without a position) for some unterminated flow collections ("[a, b").
            throw new KvSharpException($"{source}: not valid YAML (an unclosed '[' or '{{'?: {e.Message})", e);
        }
        if (stream.Documents.Count == 0) throw new KvSharpException($"{source}: empty YAML document");
        if (stream.Documents.Count > 1) throw new KvSharpException($"{source}: {stream.Documents.Count} YAML documents ('---'); give one");
        var result = new YamlToJson("");
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
            result.Write(writer, stream.Documents[0].RootNode, "$", source);
        result.Json = Encoding.UTF8.GetString(buffer.ToArray());
        return result;
    }

    /// <summary>
    /// The YAML line of a JSON path as <see cref="JsonException.Path"/> gives it (<c>$.keep[1]</c>), or of its nearest
    /// converted parent; null when nothing matches.
    /// </summary>
    public int? LineOf(string? jsonPath)
    {
        for (string? p = jsonPath; !string.IsNullOrEmpty(p); p = Parent(p))
            if (_marks.TryGetValue(p, out var mark)) return (int)mark.Line;
        return null;
    }

    /// <summary>
    /// A deserializer's message about the converted JSON, reworded for the YAML file: the JSON line/byte positions
    /// (which mean nothing to the YAML's author) become the YAML line.
    /// </summary>
    public string Describe(JsonException error)
    {
        ArgumentNullException.ThrowIfNull(error);
        string message = JsonPosition().Replace(error.Message, "").Replace("JSON ", "", StringComparison.Ordinal).TrimEnd(' ', '|', '.');
        return LineOf(error.Path) is { } line ? $"line {line}: {message}" : message;
    }

    private void Write(Utf8JsonWriter writer, YamlNode node, string path, string source)
    {
        _marks.TryAdd(path, node.Start);
        switch (node)
        {
            case YamlMappingNode map:
                writer.WriteStartObject();
                foreach (var (keyNode, value) in map.Children)
                {
                    if (keyNode is not YamlScalarNode { Value: { } key })
                        throw new KvSharpException($"{source}:{keyNode.Start.Line}:{keyNode.Start.Column}: a key must be a plain name, not a list or a map");
                    writer.WritePropertyName(key);
                    Write(writer, value, path + "." + key, source);
                }
                writer.WriteEndObject();
                break;
            case YamlSequenceNode list:
                writer.WriteStartArray();
                int i = 0;
                foreach (var item in list.Children) Write(writer, item, $"{path}[{i++}]", source);
                writer.WriteEndArray();
                break;
            case YamlScalarNode scalar:
                WriteScalar(writer, scalar, source);
                break;
            default:
                throw new KvSharpException($"{source}:{node.Start.Line}:{node.Start.Column}: unsupported YAML node ({node.NodeType})");
        }
    }

    private static void WriteScalar(Utf8JsonWriter writer, YamlScalarNode scalar, string source)
    {
        string value = scalar.Value ?? "";
        string tag = scalar.Tag.IsEmpty ? "" : scalar.Tag.Value;
        if (scalar.Style != ScalarStyle.Plain || tag == "tag:yaml.org,2002:str")
        {
            writer.WriteStringValue(value);
            return;
        }
        // The YAML 1.2 core schema: what a plain scalar means.
        switch (value)
        {
            case "" or "~" or "null" or "Null" or "NULL":
                writer.WriteNullValue();
                return;
            case "true" or "True" or "TRUE":
                writer.WriteBooleanValue(true);
                return;
            case "false" or "False" or "FALSE":
                writer.WriteBooleanValue(false);
                return;
        }
        if (DecimalInteger().IsMatch(value) && long.TryParse(value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long integer))
            writer.WriteNumberValue(integer);
        else if (value.StartsWith("0x", StringComparison.Ordinal) && value.Length > 2 && long.TryParse(value[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out long hex))
            writer.WriteNumberValue(hex);
        else if (value.StartsWith("0o", StringComparison.Ordinal) && value.Length > 2 && value[2..].All(c => c is >= '0' and <= '7'))
            writer.WriteNumberValue(value[2..].Aggregate(0L, (n, c) => (n * 8) + (c - '0')));
        else if (Float().IsMatch(value))
            writer.WriteNumberValue(double.Parse(value, NumberStyles.Float, CultureInfo.InvariantCulture));
        else if (Special().IsMatch(value))
            throw new KvSharpException($"{source}:{scalar.Start.Line}:{scalar.Start.Column}: '{value}' is not a finite number");
        else
            writer.WriteStringValue(value);
    }

    private static string Inner(YamlException e)
    {
        // YamlDotNet prefixes its messages with the position ("(Line: 2, Col: 3, ...): "), which the caller already gives.
        string message = e.InnerException is YamlException inner ? inner.Message : e.Message;
        int close = message.StartsWith('(') ? message.IndexOf("): ", StringComparison.Ordinal) : -1;
        return close >= 0 ? message[(close + 3)..] : message;
    }

    private static string? Parent(string path)
    {
        int cut = Math.Max(path.LastIndexOf('.'), path.LastIndexOf('['));
        return cut > 0 ? path[..cut] : null;
    }

    [GeneratedRegex(@"^[-+]?[0-9]+$")]
    private static partial Regex DecimalInteger();

    [GeneratedRegex(@"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")]
    private static partial Regex Float();

    [GeneratedRegex(@"^([-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN))$")]
    private static partial Regex Special();

    [GeneratedRegex(@"\s*(\|\s*)?LineNumber: \d+ \| BytePositionInLine: \d+\.?")]
    private static partial Regex JsonPosition();
}
