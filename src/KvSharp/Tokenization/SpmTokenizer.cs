using System.Text;

namespace KvSharp.Tokenization;

/// <summary>
/// SentencePiece-style tokenizer of GGUF <c>llama</c> vocabularies, with llama.cpp's algorithm
/// (llm_tokenizer_spm): spaces become '▁', a space is prefixed to text that starts the input or
/// follows a literal token, then adjacent pieces are merged greedily by the score of the merged
/// vocabulary entry (highest first, leftmost on ties); pieces left outside the vocabulary are
/// spelled with byte-fallback tokens <c>&lt;0xXX&gt;</c>.
/// </summary>
public sealed class SpmTokenizer : VocabTokenizer
{
    private const char Space = '\u2581';
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly float[] _scores;
    private readonly int[] _byteIds = new int[256];
    private readonly int? _unkId;
    private readonly bool _addSpacePrefix;

    internal SpmTokenizer(string[] tokens, float[] scores, TokenKind[] kinds, int? bosId, int? eosId, IReadOnlyList<int> eosIds,
        int? unkId, bool addBos, bool addEos, bool addSpacePrefix)
        : base(tokens, kinds, i => PieceBytes(tokens[i], kinds[i]), LiteralTokens(tokens, kinds), bosId, eosIds,
            addBos && bosId is int bosValue ? [bosValue] : [], addEos && eosId is int e ? [e] : [], addSpacePrefix)
    {
        var map = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
        for (int i = 0; i < tokens.Length; i++) map[tokens[i]] = i; // later duplicates win, as in llama.cpp
        _lookup = map.GetAlternateLookup<ReadOnlySpan<char>>();
        _scores = scores;
        _unkId = unkId;
        _addSpacePrefix = addSpacePrefix;
        for (int b = 0; b < 256; b++)
        {
            if (map.TryGetValue($"<0x{b:X2}>", out int id)) _byteIds[b] = id;
            else if (b < 128 && map.TryGetValue(((char)b).ToString(), out id)) _byteIds[b] = id;
            else _byteIds[b] = unkId ?? -1;
        }
    }

    /// <summary>Whether text after BOS/a literal token gets a leading space (<c>tokenizer.ggml.add_space_prefix</c>).</summary>
    public bool AddSpacePrefix => _addSpacePrefix;

    internal static IEnumerable<AddedToken> LiteralTokens(string[] tokens, TokenKind[] kinds)
    {
        for (int i = 0; i < tokens.Length; i++)
        {
            if (kinds[i] is TokenKind.Control or TokenKind.Unknown) yield return new AddedToken(tokens[i], i, Special: true);
            else if (kinds[i] == TokenKind.UserDefined) yield return new AddedToken(tokens[i], i, Special: false);
        }
    }

    private static byte[] PieceBytes(string text, TokenKind kind)
    {
        if (kind == TokenKind.Byte && TryParseByteToken(text, out byte b)) return [b];
        if (kind is TokenKind.Control or TokenKind.Unknown) return Encoding.UTF8.GetBytes(text);
        return Encoding.UTF8.GetBytes(text.Replace(Space, ' '));
    }

    private protected override void EncodeText(string text, bool afterToken, bool first, List<int> output)
    {
        if (_addSpacePrefix && afterToken) text = " " + text;
        text = text.Replace(' ', Space);
        Tokenize(text, output);
    }

    /// <summary>An int whose ascending order is the descending order of <paramref name="score"/>.</summary>
    private static int SortableDescending(float score)
    {
        int bits = BitConverter.SingleToInt32Bits(-score + 0f); // +0f folds -0 into +0
        return bits >= 0 ? bits : bits ^ 0x7FFFFFFF;
    }

    private struct Symbol
    {
        public int Start, Length, Prev, Next;
    }

    private void Tokenize(string text, List<int> output)
    {
        if (text.Length == 0) return;
        // One symbol per code point.
        var symbols = new List<Symbol>(text.Length);
        for (int i = 0; i < text.Length;)
        {
            int len = char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) ? 2 : 1;
            symbols.Add(new Symbol { Start = i, Length = len, Prev = symbols.Count - 1, Next = i + len < text.Length ? symbols.Count + 1 : -1 });
            i += len;
        }
        var sym = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(symbols).ToArray();
        // Priority packs (score, position): highest score first, then leftmost.
        var queue = new PriorityQueue<(int Left, int Right, int Size), long>(sym.Length);
        void TryAdd(int left, int right)
        {
            if (left < 0 || right < 0) return;
            int size = sym[left].Length + sym[right].Length;
            if (!_lookup.TryGetValue(text.AsSpan(sym[left].Start, size), out int id)) return;
            queue.Enqueue((left, right, size), ((long)SortableDescending(_scores[id]) << 32) | (uint)left);
        }
        for (int i = 1; i < sym.Length; i++) TryAdd(i - 1, i);
        while (queue.TryDequeue(out var bg, out _))
        {
            ref var l = ref sym[bg.Left];
            ref var r = ref sym[bg.Right];
            // Stale if either side was merged since: its length no longer adds up.
            if (l.Length == 0 || r.Length == 0 || l.Length + r.Length != bg.Size) continue;
            l.Length += r.Length;
            r.Length = 0;
            l.Next = r.Next;
            if (r.Next >= 0) sym[r.Next].Prev = bg.Left;
            TryAdd(l.Prev, bg.Left);
            TryAdd(bg.Left, l.Next);
        }
        Span<byte> utf8 = stackalloc byte[8];
        for (int i = 0; i >= 0; i = sym[i].Next)
        {
            var piece = text.AsSpan(sym[i].Start, sym[i].Length);
            if (_lookup.TryGetValue(piece, out int id)) { output.Add(id); continue; }
            // Not a vocabulary entry (only single characters get here): spell its UTF-8 bytes.
            int n = Encoding.UTF8.GetBytes(piece, utf8);
            for (int k = 0; k < n; k++)
                if (_byteIds[utf8[k]] >= 0) output.Add(_byteIds[utf8[k]]);
        }
    }
}
