using System.Globalization;
using KvSharp.Formats.Gguf;

namespace KvSharp.Tokenization;

/// <summary>Builds a tokenizer from the <c>tokenizer.ggml.*</c> metadata of a GGUF file.</summary>
internal static class GgufTokenizerReader
{
    public static ITokenizer Read(GgufFile gguf)
    {
        string model = gguf.Get<string?>("tokenizer.ggml.model", null)
            ?? throw new ModelFormatException(gguf.Path, "no embedded tokenizer (metadata key 'tokenizer.ggml.model' is missing)");
        var tokens = gguf.Require<string[]>("tokenizer.ggml.tokens");
        if (tokens.Length == 0) throw new ModelFormatException(gguf.Path, "'tokenizer.ggml.tokens' is empty");
        var kinds = ReadKinds(gguf, tokens.Length);
        int? bos = OptionalId(gguf, "tokenizer.ggml.bos_token_id", tokens.Length);
        int? eos = OptionalId(gguf, "tokenizer.ggml.eos_token_id", tokens.Length);
        int? unk = OptionalId(gguf, "tokenizer.ggml.unknown_token_id", tokens.Length);
        var eosIds = new List<int>();
        foreach (var key in new[] { "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id" })
            if (OptionalId(gguf, key, tokens.Length) is int id && !eosIds.Contains(id)) eosIds.Add(id);
        bool addEos = gguf.Get("tokenizer.ggml.add_eos_token", false);

        switch (model)
        {
            case "llama":
                {
                    var scores = gguf.Get<float[]?>("tokenizer.ggml.scores", null) ?? new float[tokens.Length];
                    if (scores.Length != tokens.Length)
                        throw new ModelFormatException(gguf.Path, $"'tokenizer.ggml.scores' has {scores.Length} entries for {tokens.Length} tokens");
                    bool addBos = gguf.Get("tokenizer.ggml.add_bos_token", true);
                    bool spacePrefix = gguf.Get("tokenizer.ggml.add_space_prefix", true);
                    return new SpmTokenizer(tokens, scores, kinds, bos, eos, eosIds, unk, addBos, addEos, spacePrefix);
                }
            case "gpt2":
                {
                    string? pre = gguf.Get<string?>("tokenizer.ggml.pre", null);
                    var patterns = PreTokenizerPatterns.ForGgufPre(pre)
                        ?? throw new ModelFormatException(gguf.Path, $"unsupported pre-tokenizer 'tokenizer.ggml.pre' = '{pre}'");
                    var merges = gguf.Get<string[]?>("tokenizer.ggml.merges", null)
                        ?? throw new ModelFormatException(gguf.Path, "BPE vocabulary without 'tokenizer.ggml.merges'");
                    var vocab = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
                    for (int i = 0; i < tokens.Length; i++) vocab[tokens[i]] = i;
                    var mergeTable = BpeMerges.Build(merges.Select(m => SplitMerge(gguf.Path, m)), vocab);
                    bool addBos = gguf.Get("tokenizer.ggml.add_bos_token", false);
                    var options = new BpeOptions
                    {
                        PreTokenizer = new RegexPreTokenizer(patterns),
                        ByteLevel = true,
                        UnkId = unk,
                        IgnoreMerges = pre is "llama3" or "llama-bpe" or "llama-v3",
                    };
                    return new BpeTokenizer(tokens, kinds, vocab, mergeTable, options, SpmTokenizer.LiteralTokens(tokens, kinds),
                        i => kinds[i] is TokenKind.Normal or TokenKind.Byte or TokenKind.Undefined
                            ? BpeTokenizer.ByteLevelPiece(tokens[i]) : System.Text.Encoding.UTF8.GetBytes(tokens[i]),
                        bos, eosIds, addBos && bos is int b ? [b] : [], addEos && eos is int e ? [e] : [], stripLeadingSpace: false);
                }
            default:
                throw new ModelFormatException(gguf.Path, $"unsupported tokenizer model 'tokenizer.ggml.model' = '{model}' (supported: llama, gpt2)");
        }
    }

    internal static (string, string) SplitMerge(string path, string merge)
    {
        int sp = merge.IndexOf(' ', 1);
        if (sp < 0) throw new ModelFormatException(path, $"malformed BPE merge '{merge}' (expected 'left right')");
        return (merge[..sp], merge[(sp + 1)..]);
    }

    private static TokenKind[] ReadKinds(GgufFile gguf, int count)
    {
        var kinds = new TokenKind[count];
        if (!gguf.Metadata.TryGetValue("tokenizer.ggml.token_type", out var raw))
        {
            Array.Fill(kinds, TokenKind.Normal);
            return kinds;
        }
        if (raw is not Array arr || arr.Length != count)
            throw new ModelFormatException(gguf.Path, $"'tokenizer.ggml.token_type' is not an array of {count} integers");
        for (int i = 0; i < count; i++)
            kinds[i] = (TokenKind)Convert.ToInt32(arr.GetValue(i), CultureInfo.InvariantCulture);
        return kinds;
    }

    private static int? OptionalId(GgufFile gguf, string key, int vocabSize)
    {
        if (!gguf.Metadata.TryGetValue(key, out var v)) return null;
        long id = Convert.ToInt64(v, CultureInfo.InvariantCulture);
        if (id == -1 || id == uint.MaxValue) return null;
        if (id < 0 || id >= vocabSize) throw new ModelFormatException(gguf.Path, $"'{key}' = {id} is outside the vocabulary of {vocabSize}");
        return (int)id;
    }
}
