using System.Text;

namespace KvSharp.Tokenization;

/// <summary>
/// Turns a stream of token bytes (<see cref="ITokenizer.TokenBytes"/>) into text as it arrives,
/// emitting only complete UTF-8 characters: a multi-byte character split across byte-fallback or
/// byte-level tokens is held back until its last byte comes. Invalid bytes become U+FFFD.
/// </summary>
public sealed class Utf8StreamDecoder
{
    private readonly Decoder _decoder = new UTF8Encoding(false, false).GetDecoder();
    private readonly ITokenizer? _tokenizer;
    private readonly bool _skipSpecial;
    private bool _stripLeadingSpace;
    private char[] _chars = new char[64];

    /// <summary>A decoder for raw bytes (push them with <see cref="Push(ReadOnlySpan{byte})"/>).</summary>
    public Utf8StreamDecoder() { }

    /// <summary>
    /// A decoder for token ids of <paramref name="tokenizer"/> (push them with <see cref="Push(int)"/>).
    /// Special tokens are skipped when <paramref name="skipSpecial"/>; the leading space a
    /// SentencePiece space prefix adds is dropped when <paramref name="stripLeadingSpace"/>
    /// (as <see cref="ITokenizer.Decode"/> does).
    /// </summary>
    public Utf8StreamDecoder(ITokenizer tokenizer, bool skipSpecial = true, bool stripLeadingSpace = true)
    {
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _skipSpecial = skipSpecial;
        _stripLeadingSpace = stripLeadingSpace && tokenizer is VocabTokenizer { StripsLeadingSpace: true };
    }

    /// <summary>Adds the bytes of token <paramref name="id"/>; returns the text completed by them (possibly empty).</summary>
    public string Push(int id)
    {
        if (_tokenizer == null) throw new InvalidOperationException("this decoder was created without a tokenizer; push bytes instead");
        if (_skipSpecial && _tokenizer.IsSpecial(id)) return "";
        return Push(_tokenizer is VocabTokenizer v ? v.TokenBytesSpan(id) : _tokenizer.TokenBytes(id));
    }

    /// <summary>Adds <paramref name="bytes"/>; returns the text they complete (possibly empty).</summary>
    public string Push(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty) return "";
        int needed = _decoder.GetCharCount(bytes, flush: false);
        if (needed > _chars.Length) _chars = new char[Math.Max(needed, _chars.Length * 2)];
        int n = _decoder.GetChars(bytes, _chars, flush: false);
        return Emit(n);
    }

    /// <summary>Ends the stream: returns whatever incomplete sequence is left, as U+FFFD.</summary>
    public string Flush()
    {
        int n = _decoder.GetChars(ReadOnlySpan<byte>.Empty, _chars, flush: true);
        return Emit(n);
    }

    private string Emit(int n)
    {
        if (n == 0) return "";
        int start = 0;
        if (_stripLeadingSpace)
        {
            if (_chars[0] == ' ') start = 1;
            _stripLeadingSpace = false;
        }
        return new string(_chars, start, n - start);
    }
}
