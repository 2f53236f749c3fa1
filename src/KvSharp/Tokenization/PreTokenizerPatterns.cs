namespace KvSharp.Tokenization;

/// <summary>
/// Pre-tokenizer regex cascades of byte-level BPE vocabularies, by GGUF <c>tokenizer.ggml.pre</c>
/// name. They are the upstream Hugging Face patterns (llama.cpp ships equivalent rewrites).
/// </summary>
public static class PreTokenizerPatterns
{
    /// <summary>GPT-2's pattern (also Hugging Face ByteLevel's <c>use_regex</c>).</summary>
    public const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>Llama-3's pattern (numbers in groups of up to three).</summary>
    public const string Llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Qwen2's pattern (single digits).</summary>
    public const string Qwen2 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private const string DeepSeekLlmLetters =
        "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1F7Dᾀ-ᾴᾶ-ᾼ\u1FBEῂ-ῄῆ-ῌῐ-\u1FD3ῖ-\u1FDBῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212A-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ]+";

    /// <summary>
    /// The cascade for <paramref name="pre"/> (a GGUF <c>tokenizer.ggml.pre</c> value; null or
    /// "default" gives llama.cpp's default cascade), or null when the name is not supported.
    /// </summary>
    public static string[]? ForGgufPre(string? pre) => pre switch
    {
        null or "default" => [@"[\p{P}\$\+<=>\^~\|]+", Gpt2, @"\p{N}+", "[0-9][0-9][0-9]"],
        "gpt-2" or "gpt2" or "mpt" or "olmo" or "jais" or "trillion" or "granite-docling" => [Gpt2],
        "llama3" or "llama-bpe" or "llama-v3" or "dbrx" or "smaug-bpe" or "chatglm-bpe" or "falcon3" or "pixtral" or "megrez" => [Llama3],
        "qwen2" or "stablelm2" or "hunyuan" or "deepseek-r1-qwen" or "kimi-k2-qwen2" => [Qwen2],
        "starcoder" or "refact" or "command-r" or "smollm" or "codeshell" or "exaone" or "minerva-7b" => [@"\p{N}", Gpt2],
        "falcon" => [@"[\p{P}\$\+<=>\^~\|`]+", Gpt2, "[0-9][0-9][0-9]"],
        "deepseek-llm" => [@"[\r\n]", DeepSeekLlmLetters, @"\s?[!-/:-~！-／：-～‘-‟　-。]+", @"\s+$", "[一-龥ࠀ-一가-퟿]+", @"\p{N}+"],
        "deepseek-coder" => [@"[\r\n]", @"\s?\p{L}+", @"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", @"\p{N}"],
        "deepseek-v3" => [@"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
            @"[!""#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
        _ => null,
    };
}
