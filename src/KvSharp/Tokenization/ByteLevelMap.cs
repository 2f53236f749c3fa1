namespace KvSharp.Tokenization;

/// <summary>
/// GPT-2's reversible byte ↔ printable-character table used by byte-level BPE: bytes that are
/// printable Latin-1 map to themselves, the rest to U+0100 onwards, so every token is a string of
/// visible characters (space becomes 'Ġ', newline 'Ċ').
/// </summary>
internal static class ByteLevelMap
{
    /// <summary>Character standing for each byte.</summary>
    public static readonly char[] ByteToChar = BuildByteToChar();

    /// <summary>Byte for each stand-in character, or -1 (indexed by char up to U+0143).</summary>
    public static readonly short[] CharToByte = BuildCharToByte();

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    private static short[] BuildCharToByte()
    {
        var inv = new short[512];
        Array.Fill(inv, (short)-1);
        for (int b = 0; b < 256; b++) inv[ByteToChar[b]] = (short)b;
        return inv;
    }

    /// <summary>The byte-level string for UTF-8 <paramref name="bytes"/>.</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        return string.Create(bytes.Length, bytes.ToArray(), static (dst, src) =>
        {
            for (int i = 0; i < src.Length; i++) dst[i] = ByteToChar[src[i]];
        });
    }

    /// <summary>
    /// The bytes a byte-level token string stands for. Characters outside the table (possible in
    /// hand-made vocabularies) contribute their own UTF-8, which is what such a token means.
    /// </summary>
    public static byte[] Decode(string token)
    {
        var result = new List<byte>(token.Length);
        Span<byte> buf = stackalloc byte[4];
        for (int i = 0; i < token.Length; i++)
        {
            char c = token[i];
            if (c < CharToByte.Length && CharToByte[c] >= 0) { result.Add((byte)CharToByte[c]); continue; }
            int len = char.IsHighSurrogate(c) && i + 1 < token.Length
                ? System.Text.Encoding.UTF8.GetBytes(token.AsSpan(i++, 2), buf)
                : System.Text.Encoding.UTF8.GetBytes(token.AsSpan(i, 1), buf);
            for (int k = 0; k < len; k++) result.Add(buf[k]);
        }
        return result.ToArray();
    }
}
