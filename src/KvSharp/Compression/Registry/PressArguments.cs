using System.Globalization;

namespace KvSharp.Compression.Registry;

/// <summary>
/// The <c>name=value</c> parameters of one press in its text form, read by the scorer and budget factories. Reading
/// a parameter marks it used; <see cref="CheckAllUsed"/> then rejects any left over, naming the valid ones.
/// </summary>
public sealed class PressArguments
{
    private readonly string _press;
    private readonly Dictionary<string, string> _values;
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    internal PressArguments(string press, Dictionary<string, string> values) { _press = press; _values = values; }

    /// <summary>Whether <paramref name="name"/> was given.</summary>
    public bool Has(string name) => _values.ContainsKey(name);

    /// <summary>The raw value of <paramref name="name"/>, or null when absent (marks it used).</summary>
    public string? Raw(string name)
    {
        _used.Add(name);
        return _values.GetValueOrDefault(name);
    }

    /// <summary>A number in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public double Double(string name, double fallback, double min, double max)
    {
        string? s = Raw(name);
        if (s == null) return fallback;
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v) || v < min || v > max)
            throw Error($"parameter {name}={s} must be a number in [{min.ToString(CultureInfo.InvariantCulture)}, {max.ToString(CultureInfo.InvariantCulture)}]");
        return v;
    }

    /// <summary>An integer in [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public int Int(string name, int fallback, int min, int max = int.MaxValue)
    {
        string? s = Raw(name);
        if (s == null) return fallback;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < min || v > max)
            throw Error($"parameter {name}={s} must be an integer in [{min}, {(max == int.MaxValue ? "∞" : max.ToString(CultureInfo.InvariantCulture))}]");
        return v;
    }

    /// <summary>One of <paramref name="choices"/> (case-insensitive; returned in the listed spelling).</summary>
    public string Choice(string name, string fallback, params string[] choices)
    {
        string? s = Raw(name);
        if (s == null) return fallback;
        return choices.FirstOrDefault(c => c.Equals(s, StringComparison.OrdinalIgnoreCase))
            ?? throw Error($"parameter {name}={s} must be one of {string.Join(", ", choices)}");
    }

    /// <summary>Throws naming the first parameter no factory read, and the valid ones.</summary>
    internal void CheckAllUsed(IEnumerable<string> valid)
    {
        foreach (var name in _values.Keys)
            if (!_used.Contains(name))
                throw Error($"unknown parameter '{name}'; valid parameters: {string.Join(", ", valid.Distinct().Order(StringComparer.Ordinal))}");
    }

    /// <summary>An error about this press's text.</summary>
    public KvSharpException Error(string problem) => new($"press '{_press}': {problem}");
}
