using KvSharp.Formats.Gguf;

namespace KvSharp.Tokenization;

/// <summary>Creates the tokenizer of a model from a GGUF file or a Hugging Face model folder.</summary>
public static class TokenizerLoader
{
    /// <summary>
    /// The tokenizer embedded in <paramref name="gguf"/> (<c>tokenizer.ggml.*</c>): <c>llama</c>
    /// (SentencePiece-style) or <c>gpt2</c> (byte-level BPE) vocabularies.
    /// </summary>
    /// <exception cref="ModelFormatException">No tokenizer, or an unsupported/corrupt one.</exception>
    public static ITokenizer FromGguf(GgufFile gguf)
    {
        ArgumentNullException.ThrowIfNull(gguf);
        return GgufTokenizerReader.Read(gguf);
    }

    /// <summary>
    /// The tokenizer of a Hugging Face model folder: <c>tokenizer.json</c>, with BOS/EOS settings
    /// from <c>tokenizer_config.json</c> (bos_token, eos_token, add_bos_token), then
    /// <c>generation_config.json</c> and <c>config.json</c> (bos_token_id, eos_token_id) when present.
    /// </summary>
    /// <exception cref="KvSharpException">The folder has no <c>tokenizer.json</c>, or it is unsupported/corrupt.</exception>
    public static ITokenizer FromDirectory(string dir)
    {
        ArgumentNullException.ThrowIfNull(dir);
        string json = Path.Combine(dir, "tokenizer.json");
        if (!File.Exists(json))
            throw new KvSharpException($"{json}: tokenizer not found (expected a Hugging Face tokenizer.json in {dir})");
        string cfg = Path.Combine(dir, "tokenizer_config.json");
        var idConfigs = new[] { "generation_config.json", "config.json" }.Select(f => Path.Combine(dir, f)).Where(File.Exists);
        return HfTokenizerReader.Read(json, File.Exists(cfg) ? cfg : null, idConfigs);
    }
}
