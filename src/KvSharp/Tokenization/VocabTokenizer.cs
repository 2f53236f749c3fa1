using System.Text;

namespace KvSharp.Tokenization;

/// <summary>
/// What every vocabulary-based tokenizer shares: splitting literal added/special tokens out of the
/// text, BOS/EOS handling, per-token bytes and decoding. Subclasses encode the plain-text pieces.
/// </summary>
public abstract class VocabTokenizer : ITokenizer
{
    private readonly string[] _tokens;
    private readonly TokenKind[] _kinds;
    private readonly byte[][] _pieces;
    private readonly AddedTokenMatcher _matcher;
    private readonly int[] _prefix;
    private readonly int[] _suffix;
    private readonly bool _stripLeadingSpace;

    private protected VocabTokenizer(
        string[] tokens, TokenKind[] kinds, Func<int, byte[]> pieceBytes, IEnumerable<AddedToken> literalTokens,
        int? bosId, IReadOnlyList<int> eosIds, int[] prefix, int[] suffix, bool stripLeadingSpace)
    {
        _tokens = tokens;
        _kinds = kinds;
        _pieces = new byte[tokens.Length][];
        for (int i = 0; i < tokens.Length; i++) _pieces[i] = pieceBytes(i);
        _matcher = new AddedTokenMatcher(literalTokens);
        BosId = bosId;
        EosIds = eosIds;
        _prefix = prefix;
        _suffix = suffix;
        AddsBos = bosId is int b && prefix.Contains(b);
        _stripLeadingSpace = stripLeadingSpace;
    }

    /// <inheritdoc />
    public int VocabSize => _tokens.Length;

    /// <inheritdoc />
    public int? BosId { get; }

    /// <inheritdoc />
    public IReadOnlyList<int> EosIds { get; }

    /// <inheritdoc />
    public bool AddsBos { get; }

    /// <summary>The token's text as stored in the vocabulary (e.g. "▁the", "Ġthe", "&lt;0x0A&gt;").</summary>
    public string TokenText(int id) => _tokens[CheckId(id)];

    /// <summary>The token's kind.</summary>
    public TokenKind Kind(int id) => _kinds[CheckId(id)];

    /// <inheritdoc />
    public int[] Encode(string text, bool addSpecial = true, bool parseSpecial = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 4);
        if (addSpecial) output.AddRange(_prefix);
        var fragments = text.Length == 0 ? [] : _matcher.Split(text, parseSpecial);
        bool afterToken = true; // the start of the text counts as "after a special token"
        bool first = true;
        foreach (var f in fragments)
        {
            if (f.IsToken)
            {
                if (first) EncodeLeadingToken(output);
                output.Add(f.TokenId);
                afterToken = true;
            }
            else
            {
                EncodeText(text.Substring(f.Start, f.Length), afterToken, first, output);
                afterToken = false;
            }
            first = false;
        }
        if (addSpecial) output.AddRange(_suffix);
        return output.ToArray();
    }

    /// <summary>
    /// Appends the ids of one plain-text piece. <paramref name="afterToken"/>: the piece starts the
    /// text or follows a literal token; <paramref name="first"/>: it starts the text.
    /// </summary>
    private protected abstract void EncodeText(string text, bool afterToken, bool first, List<int> output);

    /// <summary>Hook for a normalizer that emits text before a literal token that starts the input.</summary>
    private protected virtual void EncodeLeadingToken(List<int> output) { }

    /// <inheritdoc />
    public byte[] TokenBytes(int id) => (byte[])_pieces[CheckId(id)].Clone();

    /// <summary>The token's bytes without copying; callers must not modify them.</summary>
    internal ReadOnlySpan<byte> TokenBytesSpan(int id) => _pieces[CheckId(id)];

    /// <inheritdoc />
    public bool IsSpecial(int id) => _kinds[CheckId(id)] is TokenKind.Control or TokenKind.Unknown;

    /// <inheritdoc />
    /// <remarks>
    /// Tokenizers that add a space prefix when encoding (SentencePiece-style) drop the single
    /// leading space it produced, as llama.cpp and Hugging Face's decoders do. Invalid UTF-8 becomes U+FFFD.
    /// </remarks>
    public string Decode(IEnumerable<int> ids, bool skipSpecial = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            if (skipSpecial && IsSpecial(id)) continue;
            bytes.AddRange(_pieces[CheckId(id)]);
        }
        int start = _stripLeadingSpace && bytes.Count > 0 && bytes[0] == (byte)' ' ? 1 : 0;
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes)[start..];
        return Encoding.UTF8.GetString(span);
    }

    /// <summary>Whether decoding drops the single leading space added by a space prefix.</summary>
    public bool StripsLeadingSpace => _stripLeadingSpace;

    private int CheckId(int id)
    {
        if ((uint)id >= (uint)_tokens.Length)
            throw new KvSharpException($"token id {id} is outside the vocabulary (0..{_tokens.Length - 1})");
        return id;
    }

    /// <summary>Parses "&lt;0xXX&gt;" byte-fallback token text.</summary>
    internal static bool TryParseByteToken(string text, out byte value)
    {
        value = 0;
        return text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>'
            && byte.TryParse(text.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out value);
    }
}
