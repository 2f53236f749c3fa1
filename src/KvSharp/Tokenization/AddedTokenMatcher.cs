namespace KvSharp.Tokenization;

/// <summary>One token written literally in text (special/control or user-defined/added).</summary>
/// <param name="Text">Its literal text.</param>
/// <param name="Id">Its id.</param>
/// <param name="Special">True: matched only when parsing specials. False: always matched.</param>
/// <param name="LStrip">Absorbs whitespace on its left (Hugging Face <c>lstrip</c>).</param>
/// <param name="RStrip">Absorbs whitespace on its right (Hugging Face <c>rstrip</c>).</param>
internal readonly record struct AddedToken(string Text, int Id, bool Special, bool LStrip = false, bool RStrip = false);

/// <summary>A piece of the input: raw text to run through the model, or one literal token.</summary>
internal readonly record struct Fragment(int Start, int Length, int TokenId)
{
    public bool IsToken => TokenId >= 0;
}

/// <summary>
/// Splits text around literal added/special tokens, leftmost match first and the longest token
/// at a position (as Hugging Face's added-vocabulary matcher does), before the model sees it.
/// </summary>
internal sealed class AddedTokenMatcher
{
    private readonly Dictionary<char, AddedToken[]> _byFirstChar = new();

    public AddedTokenMatcher(IEnumerable<AddedToken> tokens)
    {
        foreach (var g in tokens.Where(t => t.Text.Length > 0).GroupBy(t => t.Text[0]))
            _byFirstChar[g.Key] = g.OrderByDescending(t => t.Text.Length).ToArray();
    }

    /// <summary>Whether any token can be matched at all.</summary>
    public bool IsEmpty => _byFirstChar.Count == 0;

    public List<Fragment> Split(string text, bool parseSpecial)
    {
        var result = new List<Fragment>();
        int textStart = 0;
        int pos = 0;
        while (pos < text.Length)
        {
            if (!_byFirstChar.TryGetValue(text[pos], out var candidates)) { pos++; continue; }
            AddedToken? hit = null;
            foreach (var t in candidates)
            {
                if (t.Special && !parseSpecial) continue;
                if (string.CompareOrdinal(text, pos, t.Text, 0, t.Text.Length) == 0 && pos + t.Text.Length <= text.Length)
                {
                    hit = t;
                    break;
                }
            }
            if (hit is not { } tok) { pos++; continue; }
            int left = pos, right = pos + tok.Text.Length;
            if (tok.LStrip) while (left > textStart && char.IsWhiteSpace(text[left - 1])) left--;
            if (tok.RStrip) while (right < text.Length && char.IsWhiteSpace(text[right])) right++;
            if (left > textStart) result.Add(new Fragment(textStart, left - textStart, -1));
            result.Add(new Fragment(left, right - left, tok.Id));
            textStart = pos = right;
        }
        if (textStart < text.Length) result.Add(new Fragment(textStart, text.Length - textStart, -1));
        return result;
    }
}
