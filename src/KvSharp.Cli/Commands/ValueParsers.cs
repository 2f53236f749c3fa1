using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace KvSharp.Cli.Commands;

/// <summary>
/// Number parsers that word their errors for people ("--top-k: 'abc' is not a whole number") instead of
/// System.CommandLine's type names ("as expected type 'System.Int32'"). Parsing is culture-invariant.
/// </summary>
internal static class ValueParsers
{
    public static Option<int> Int(this Option<int> option) { option.CustomParser = r => Parse<int>(r, option.Name, Ints, "a whole number"); return option; }

    public static Option<int?> Int(this Option<int?> option)
    {
        option.CustomParser = r => r.Tokens.Count == 0 ? null : Parse<int>(r, option.Name, Ints, "a whole number");
        return option;
    }

    public static Option<float> Float(this Option<float> option) { option.CustomParser = r => Parse<float>(r, option.Name, Floats, "a number"); return option; }

    public static Option<ulong?> ULong(this Option<ulong?> option)
    {
        option.CustomParser = r => r.Tokens.Count == 0 ? null : Parse<ulong>(r, option.Name, ULongs, "a whole number >= 0");
        return option;
    }

    private static bool Ints(string s, out int v) => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out v);
    private static bool Floats(string s, out float v) => float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out v);
    private static bool ULongs(string s, out ulong v) => ulong.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out v);

    private delegate bool TryParse<T>(string text, out T value);

    private static T Parse<T>(ArgumentResult result, string optionName, TryParse<T> tryParse, string what)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        if (tryParse(text, out var value)) return value;
        result.AddError($"{optionName}: '{text}' is not {what}");
        return default!;
    }
}
