using System.Text;

namespace KvSharp.Tokenization;

/// <summary>
/// A stand-in tokenizer for models without a vocabulary (dummy weights from a bare config.json):
/// token id = byte value, so any text maps to valid ids and any ids print as something.
/// </summary>
public sealed class ByteTokenizer : ITokenizer
{
    /// <summary>Creates a byte tokenizer for a model of <paramref name="vocabSize"/> (at least 256) ids.</summary>
    public ByteTokenizer(int vocabSize, int? bosId = null, IReadOnlyList<int>? eosIds = null)
    {
        if (vocabSize < 256) throw new KvSharpException($"a model without a tokenizer needs at least 256 token ids for byte tokens, this one has {vocabSize}");
        VocabSize = vocabSize;
        BosId = bosId;
        EosIds = eosIds ?? [];
    }

    /// <inheritdoc />
    public int VocabSize { get; }

    /// <inheritdoc />
    public int? BosId { get; }

    /// <inheritdoc />
    public IReadOnlyList<int> EosIds { get; }

    /// <inheritdoc />
    public bool AddsBos => false;

    /// <inheritdoc />
    public int[] Encode(string text, bool addSpecial = true, bool parseSpecial = true) =>
        Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray();

    /// <inheritdoc />
    public byte[] TokenBytes(int id) => id < 256 ? [(byte)id] : Encoding.UTF8.GetBytes($"<{id}>");

    /// <inheritdoc />
    public bool IsSpecial(int id) => false;

    /// <inheritdoc />
    public string Decode(IEnumerable<int> ids, bool skipSpecial = true) =>
        Encoding.UTF8.GetString(ids.SelectMany(TokenBytes).ToArray());
}
