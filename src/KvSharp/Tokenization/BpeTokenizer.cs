using System.Collections.Concurrent;
using System.Text;

namespace KvSharp.Tokenization;

/// <summary>Where a normalizer prefix (SentencePiece's '▁') is prepended.</summary>
internal enum PrependMode
{
    /// <summary>Never.</summary>
    Never,
    /// <summary>To the first piece of the input only (also before a literal token that starts it).</summary>
    First,
    /// <summary>To every plain-text piece.</summary>
    Always,
}

/// <summary>How a <see cref="BpeTokenizer"/> prepares and spells text.</summary>
internal sealed class BpeOptions
{
    /// <summary>Regex cascade splitting text into words; null: the whole piece is one word.</summary>
    public RegexPreTokenizer? PreTokenizer { get; init; }

    /// <summary>Byte-level BPE (GPT-2): words are spelled as UTF-8 bytes through <see cref="ByteLevelMap"/>.</summary>
    public bool ByteLevel { get; init; }

    /// <summary>Characters outside the vocabulary become <c>&lt;0xXX&gt;</c> tokens (not byte-level).</summary>
    public bool ByteFallback { get; init; }

    /// <summary>The unknown token, used when nothing else can spell a character.</summary>
    public int? UnkId { get; init; }

    /// <summary>Consecutive unknown characters give one unknown token.</summary>
    public bool FuseUnk { get; init; }

    /// <summary>A word that is itself a vocabulary entry is emitted without merging (Llama-3).</summary>
    public bool IgnoreMerges { get; init; }

    /// <summary>Unicode normalization / replacement applied to each plain-text piece.</summary>
    public Func<string, string>? Normalize { get; init; }

    /// <summary>Prefix added by the normalizer/pre-tokenizer (e.g. "▁"), and where.</summary>
    public string Prepend { get; init; } = "";

    /// <summary>Where <see cref="Prepend"/> applies.</summary>
    public PrependMode PrependMode { get; init; }

    /// <summary>
    /// With <see cref="PrependMode.First"/>: a literal token that starts the input still gets the
    /// prefix before it (a Prepend normalizer run over the whole input before tokens are matched).
    /// </summary>
    public bool PrependBeforeLeadingToken { get; init; }

    /// <summary>Metaspace split: a new word starts at every '▁'.</summary>
    public bool SplitOnMetaspace { get; init; }
}

/// <summary>
/// Byte-pair-encoding tokenizer driven by a merge-rank table: GGUF <c>gpt2</c> vocabularies and
/// Hugging Face <c>tokenizer.json</c> BPE models (byte-level with a pre-tokenizer regex, or
/// SentencePiece-style with '▁' and byte fallback). Results per pre-token word are cached.
/// </summary>
public sealed class BpeTokenizer : VocabTokenizer
{
    private const int CacheLimit = 200_000;
    private readonly Dictionary<string, int> _vocab;
    private readonly BpeMerges _merges;
    private readonly BpeOptions _options;
    private readonly int[] _byteIds = new int[256];
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);

    internal BpeTokenizer(string[] tokens, TokenKind[] kinds, Dictionary<string, int> vocab, BpeMerges merges, BpeOptions options,
        IEnumerable<AddedToken> literalTokens, Func<int, byte[]> pieceBytes, int? bosId, IReadOnlyList<int> eosIds,
        int[] prefix, int[] suffix, bool stripLeadingSpace)
        : base(tokens, kinds, pieceBytes, literalTokens, bosId, eosIds, prefix, suffix, stripLeadingSpace)
    {
        _vocab = vocab;
        _merges = merges;
        _options = options;
        for (int b = 0; b < 256; b++)
        {
            string key = options.ByteLevel ? ByteLevelMap.ByteToChar[b].ToString() : $"<0x{b:X2}>";
            _byteIds[b] = vocab.TryGetValue(key, out int id) ? id : -1;
        }
    }

    /// <summary>The pre-tokenizer regexes in cascade order (empty when text is not split).</summary>
    public IReadOnlyList<string> PreTokenizerPatterns => _options.PreTokenizer?.Patterns ?? [];

    /// <summary>Bytes of a byte-level vocabulary entry.</summary>
    internal static byte[] ByteLevelPiece(string text) => ByteLevelMap.Decode(text);

    /// <summary>Bytes of a SentencePiece-style entry: '▁' is a space, <c>&lt;0xXX&gt;</c> one byte.</summary>
    internal static byte[] MetaspacePiece(string text) =>
        TryParseByteToken(text, out byte b) ? [b] : Encoding.UTF8.GetBytes(text.Replace('\u2581', ' '));

    private protected override void EncodeLeadingToken(List<int> output)
    {
        if (_options.PrependBeforeLeadingToken && _options.Prepend.Length > 0) EncodeWords(_options.Prepend, output);
    }

    private protected override void EncodeText(string text, bool afterToken, bool first, List<int> output)
    {
        if (_options.Normalize != null) text = _options.Normalize(text);
        if (text.Length == 0) return;
        if (_options.PrependMode == PrependMode.Always || (_options.PrependMode == PrependMode.First && first))
            text = _options.Prepend + text;
        EncodeWords(text, output);
    }

    private void EncodeWords(string text, List<int> output)
    {
        if (_options.PreTokenizer != null)
        {
            foreach (var (start, length) in _options.PreTokenizer.Split(text)) EncodeCached(text.Substring(start, length), output);
        }
        else if (_options.SplitOnMetaspace)
        {
            int start = 0;
            for (int i = 1; i <= text.Length; i++)
            {
                if (i == text.Length || text[i] == '\u2581')
                {
                    EncodeCached(text[start..i], output);
                    start = i;
                }
            }
        }
        else
        {
            // One word for the whole piece (SentencePiece-style models): too varied to cache.
            var symbols = new List<int>();
            Spell(text, symbols);
            Merge(text, symbols, output);
        }
    }

    private void EncodeCached(string word, List<int> output)
    {
        if (!_cache.TryGetValue(word, out var ids))
        {
            var symbols = new List<int>(word.Length + 4);
            Spell(word, symbols);
            var result = new List<int>(symbols.Count);
            Merge(word, symbols, result);
            ids = result.ToArray();
            if (_cache.Count >= CacheLimit) _cache.Clear();
            _cache[word] = ids;
        }
        output.AddRange(ids);
    }

    /// <summary>Initial symbols of a word: one per byte (byte-level) or per code point.</summary>
    private void Spell(string word, List<int> symbols)
    {
        Span<byte> utf8 = stackalloc byte[8];
        if (_options.ByteLevel)
        {
            foreach (byte b in Encoding.UTF8.GetBytes(word))
            {
                int id = _byteIds[b];
                if (id >= 0) symbols.Add(id);
                else if (_options.UnkId is int unk) symbols.Add(unk);
            }
            return;
        }
        var lookup = _vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        bool prevUnk = false;
        for (int i = 0; i < word.Length;)
        {
            int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            var ch = word.AsSpan(i, len);
            i += len;
            if (lookup.TryGetValue(ch, out int id)) { symbols.Add(id); prevUnk = false; continue; }
            if (_options.ByteFallback)
            {
                int n = Encoding.UTF8.GetBytes(ch, utf8);
                bool all = true;
                for (int k = 0; k < n; k++) all &= _byteIds[utf8[k]] >= 0;
                if (all)
                {
                    for (int k = 0; k < n; k++) symbols.Add(_byteIds[utf8[k]]);
                    prevUnk = false;
                    continue;
                }
            }
            if (_options.UnkId is int unk)
            {
                if (!(_options.FuseUnk && prevUnk)) symbols.Add(unk);
                prevUnk = true;
            }
        }
    }

    private void Merge(string word, List<int> symbols, List<int> output)
    {
        if (_options.IgnoreMerges)
        {
            string key = _options.ByteLevel ? ByteLevelMap.Encode(Encoding.UTF8.GetBytes(word)) : word;
            if (_vocab.TryGetValue(key, out int whole)) { output.Add(whole); return; }
        }
        _merges.Apply(symbols);
        output.AddRange(symbols);
    }
}
