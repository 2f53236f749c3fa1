namespace KvSharp.Tokenization;

/// <summary>Text ↔ token ids for one model's vocabulary.</summary>
public interface ITokenizer
{
    /// <summary>Number of token ids.</summary>
    int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, if the vocabulary has one.</summary>
    int? BosId { get; }

    /// <summary>End-of-sequence ids (end of text, end of turn, ...).</summary>
    IReadOnlyList<int> EosIds { get; }

    /// <summary>Whether <see cref="Encode"/> prepends BOS when <c>addSpecial</c> is true (the model's own convention).</summary>
    bool AddsBos { get; }

    /// <summary>
    /// Encodes <paramref name="text"/>. <paramref name="addSpecial"/> adds the model's BOS (and
    /// whatever its post-processor adds); <paramref name="parseSpecial"/> recognizes special/added
    /// tokens written in the text (e.g. "&lt;|im_start|&gt;") instead of spelling them out.
    /// </summary>
    int[] Encode(string text, bool addSpecial = true, bool parseSpecial = true);

    /// <summary>
    /// The bytes token <paramref name="id"/> contributes to the output text (special tokens give
    /// their text; byte-fallback tokens give their byte). Concatenating these and decoding UTF-8
    /// gives the text, which lets output stream token by token.
    /// </summary>
    byte[] TokenBytes(int id);

    /// <summary>Whether <paramref name="id"/> is a control/special token (BOS, EOS, chat markers).</summary>
    bool IsSpecial(int id);

    /// <summary>Decodes ids to text (special tokens skipped when <paramref name="skipSpecial"/>).</summary>
    string Decode(IEnumerable<int> ids, bool skipSpecial = true);
}
