using System.Collections.Concurrent;
using System.Globalization;
using System.Text.RegularExpressions;

namespace KvSharp.Tokenization;

/// <summary>
/// Splits text into pre-tokens with a cascade of regexes, each applied to every piece the previous
/// one left; both matches and the text between matches become pieces (Hugging Face's
/// <c>Split</c> with behavior <c>Isolated</c>, and llama.cpp's unicode_regex_split).
/// </summary>
/// <remarks>
/// .NET regexes see UTF-16 code units, so a character outside the Basic Multilingual Plane would
/// look like two surrogates of category Cs and fail <c>\p{L}</c> or <c>\p{N}</c>. Text containing
/// such characters is therefore matched on a proxy string with one BMP stand-in per code point of
/// the same Unicode category, and the piece boundaries are mapped back.
/// </remarks>
internal sealed class RegexPreTokenizer
{
    private static readonly ConcurrentDictionary<string, Regex> Compiled = new();
    private readonly Regex[] _regexes;

    public RegexPreTokenizer(IEnumerable<string> patterns)
    {
        _regexes = patterns.Select(p => Compiled.GetOrAdd(p, static pat =>
            new Regex(pat, RegexOptions.Compiled | RegexOptions.CultureInvariant))).ToArray();
    }

    /// <summary>The patterns, in cascade order.</summary>
    public IReadOnlyList<string> Patterns => _regexes.Select(r => r.ToString()).ToArray();

    /// <summary>Pieces of <paramref name="text"/> as (start, length) in UTF-16 units.</summary>
    public List<(int Start, int Length)> Split(string text)
    {
        var (proxy, map) = Proxy(text);
        var pieces = new List<(int, int)> { (0, proxy.Length) };
        var next = new List<(int, int)>();
        foreach (var regex in _regexes)
        {
            next.Clear();
            foreach (var (start, length) in pieces)
            {
                int cursor = start;
                for (var m = regex.Match(proxy, start, length); m.Success; m = m.NextMatch())
                {
                    if (m.Length == 0) continue;
                    if (m.Index > cursor) next.Add((cursor, m.Index - cursor));
                    next.Add((m.Index, m.Length));
                    cursor = m.Index + m.Length;
                }
                if (cursor < start + length) next.Add((cursor, start + length - cursor));
            }
            (pieces, next) = (next, pieces);
        }
        if (map == null) return pieces;
        var mapped = new List<(int, int)>(pieces.Count);
        foreach (var (s, l) in pieces) mapped.Add((map[s], map[s + l] - map[s]));
        return mapped;
    }

    /// <summary>
    /// The proxy string (one char per code point) and the map from proxy index to text index, or
    /// the text itself and null when it has no surrogates.
    /// </summary>
    private static (string Proxy, int[]? Map) Proxy(string text)
    {
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0) return (text, null);
        var chars = new char[text.Length];
        var map = new int[text.Length + 1];
        int n = 0;
        for (int i = 0; i < text.Length; i++)
        {
            map[n] = i;
            char c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                int cp = char.ConvertToUtf32(c, text[i + 1]);
                chars[n++] = StandIn(CharUnicodeInfo.GetUnicodeCategory(cp));
                i++;
            }
            else chars[n++] = char.IsSurrogate(c) ? StandIn(UnicodeCategory.OtherNotAssigned) : c;
        }
        map[n] = text.Length;
        return (new string(chars, 0, n), map);
    }

    /// <summary>
    /// A BMP character of category <paramref name="cat"/> that lies outside every explicit character
    /// range used by the supported pre-tokenizer regexes (ASCII classes, deepseek's Latin/Greek/CJK
    /// lists), so only its category decides how it is matched.
    /// </summary>
    private static char StandIn(UnicodeCategory cat) => cat switch
    {
        UnicodeCategory.UppercaseLetter => '\u10C7',
        UnicodeCategory.LowercaseLetter => '\u0561',
        UnicodeCategory.TitlecaseLetter => '\u01C5',
        UnicodeCategory.ModifierLetter => '\u02B0',
        UnicodeCategory.OtherLetter => '\u05D0',
        UnicodeCategory.NonSpacingMark => '\u0300',
        UnicodeCategory.SpacingCombiningMark => '\uA823',
        UnicodeCategory.EnclosingMark => '\u0488',
        UnicodeCategory.DecimalDigitNumber => '\u0660',
        UnicodeCategory.LetterNumber => '\uA6E6',
        UnicodeCategory.OtherNumber => '\u00B2',
        UnicodeCategory.ConnectorPunctuation => '\uFE33',
        UnicodeCategory.DashPunctuation => '\u058A',
        UnicodeCategory.OpenPunctuation => '\uFF5F',
        UnicodeCategory.ClosePunctuation => '\uFF60',
        UnicodeCategory.InitialQuotePunctuation => '\u00AB',
        UnicodeCategory.FinalQuotePunctuation => '\u00BB',
        UnicodeCategory.OtherPunctuation => '\u00A1',
        UnicodeCategory.MathSymbol => '\u00AC',
        UnicodeCategory.CurrencySymbol => '\u00A2',
        UnicodeCategory.ModifierSymbol => '\u00B4',
        UnicodeCategory.OtherSymbol => '\u00A6',
        UnicodeCategory.Format => '\u00AD',
        UnicodeCategory.PrivateUse => '\uE000',
        _ => '\u0378', // unassigned
    };
}
