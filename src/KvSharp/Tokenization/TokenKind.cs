namespace KvSharp.Tokenization;

/// <summary>
/// What a vocabulary entry is, with GGUF's <c>tokenizer.ggml.token_type</c> numbering (llama.cpp's
/// llama_token_type), so GGUF values map directly.
/// </summary>
public enum TokenKind
{
    /// <summary>No type recorded.</summary>
    Undefined = 0,
    /// <summary>Ordinary text piece.</summary>
    Normal = 1,
    /// <summary>The unknown-token placeholder.</summary>
    Unknown = 2,
    /// <summary>Control token (BOS, EOS, chat markers); matched in text only when parsing specials.</summary>
    Control = 3,
    /// <summary>User-defined (added, non-special) token; always matched in text.</summary>
    UserDefined = 4,
    /// <summary>Unused slot.</summary>
    Unused = 5,
    /// <summary>Byte-fallback token <c>&lt;0xXX&gt;</c>.</summary>
    Byte = 6,
}
