using System.Globalization;
using System.Text;

namespace KvSharp.Cli.Commands;

/// <summary>
/// Backslash escapes in text options (<c>--prompt</c>, <c>--stop</c>, <c>--system</c>), as llama.cpp's command line
/// processes them by default, so that <c>--stop "\n\n"</c> means two newlines. <c>--no-escape</c> turns it off.
/// </summary>
internal static class Escapes
{
    /// <summary>Replaces \n, \r, \t, \\, \", \' and \xHH; any other backslash is kept as written.</summary>
    public static string Process(string text)
    {
        if (!text.Contains('\\')) return text;
        var sb = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c != '\\' || i + 1 == text.Length) { sb.Append(c); continue; }
            char next = text[i + 1];
            switch (next)
            {
                case 'n': sb.Append('\n'); i++; break;
                case 'r': sb.Append('\r'); i++; break;
                case 't': sb.Append('\t'); i++; break;
                case '\\': sb.Append('\\'); i++; break;
                case '"': sb.Append('"'); i++; break;
                case '\'': sb.Append('\''); i++; break;
                case 'x' when IsHex(text, i + 2, 2):
                    sb.Append((char)int.Parse(text.AsSpan(i + 2, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    i += 3;
                    break;
                default: sb.Append(c); break;
            }
        }
        return sb.ToString();
    }

    private static bool IsHex(string text, int start, int length) =>
        start + length <= text.Length && !text.AsSpan(start, length).ContainsAnyExcept("0123456789abcdefABCDEF");
}
