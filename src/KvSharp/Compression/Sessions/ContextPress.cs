using KvSharp.Compression.Recall;
using KvSharp.Compression.Registry;

namespace KvSharp.Compression.Sessions;

/// <summary>
/// What a <see cref="CompressedContext"/> does to its context: a press of <see cref="PressRegistry"/> applied to the
/// cache (eviction, quantization, layer sharing), then optionally ClusterKV recall over what it kept. Text form
/// (CLI <c>--press</c> of <c>ask</c> and <c>demo</c>):
/// <code>
/// PRESS                      e.g. kvzip:keep=0.3
/// clusterkv[:params]         e.g. clusterkv:keep=0.1 (every byte kept; each decode step reads the best clusters)
/// PRESS+clusterkv[:params]   e.g. kvzip:keep=0.5+clusterkv:tokens=256 (recall over the tokens the press kept)
/// </code>
/// ClusterKV's parameters are those of <see cref="ClusterKvOptions"/> (the form eval uses); it comes last, since it
/// reads the cache the presses before it leave.
/// </summary>
public sealed record ContextPress
{
    /// <summary>The press applied to the cache; null = the cache is kept as prefilled.</summary>
    public IKvPress? Press { get; init; }

    /// <summary>ClusterKV recall over the (pressed) cache while answering; null = decoding reads every stored token.</summary>
    public ClusterKvOptions? Recall { get; init; }

    /// <summary>The canonical text form ("none" when neither is set).</summary>
    public string Text => (Press, Recall) switch
    {
        (null, null) => "none",
        ({ } p, null) => p.Text,
        (null, { } r) => r.Text,
        ({ } p, { } r) => $"{p.Text}+{r.Text}",
    };

    /// <summary>Parses the text form; <c>none</c> (or an empty text) is no press and no recall.</summary>
    /// <exception cref="KvSharpException">The press is malformed (the registry's message), or clusterkv is given twice or before another press.</exception>
    public static ContextPress Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string trimmed = text.Trim();
        if (trimmed.Length == 0 || trimmed.Equals("none", StringComparison.OrdinalIgnoreCase)) return new ContextPress();
        var parts = TopLevelParts(trimmed);
        int recall = parts.FindIndex(ClusterKvOptions.Names);
        if (recall < 0) return new ContextPress { Press = PressRegistry.Parse(trimmed) };
        if (parts.FindLastIndex(ClusterKvOptions.Names) != recall)
            throw new KvSharpException($"press '{trimmed}': clusterkv is given twice; give it once, last");
        if (recall != parts.Count - 1)
            throw new KvSharpException($"press '{trimmed}': clusterkv must come last (it recalls from the cache the presses before it leave), e.g. kvzip:keep=0.5+clusterkv:keep=0.2");
        return new ContextPress
        {
            Press = recall == 0 ? null : PressRegistry.Parse(string.Join('+', parts.Take(recall))),
            Recall = ClusterKvOptions.Parse(parts[recall]),
        };
    }

    /// <summary>Splits at the '+' outside parentheses (the registry checks the parts' own syntax).</summary>
    private static List<string> TopLevelParts(string text)
    {
        var parts = new List<string>();
        int depth = 0, start = 0;
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] == '(') depth++;
            else if (text[i] == ')') depth--;
            else if (text[i] == '+' && depth == 0) { parts.Add(text[start..i].Trim()); start = i + 1; }
        }
        parts.Add(text[start..].Trim());
        return parts;
    }
}
