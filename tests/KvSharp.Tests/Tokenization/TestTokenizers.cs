using System.Collections.Concurrent;
using KvSharp.Formats.Gguf;
using KvSharp.Tokenization;

namespace KvSharp.Tests.Tokenization;

/// <summary>Tokenizers loaded once per test run (loading a 128K vocabulary is the slow part).</summary>
internal static class TestTokenizers
{
    private static readonly ConcurrentDictionary<string, Lazy<ITokenizer>> Cache = new();

    /// <summary>The tokenizer of a Hugging Face folder under ../shared.</summary>
    public static ITokenizer Hf(params string[] dir) =>
        Cache.GetOrAdd("hf:" + string.Join('/', dir), _ => new Lazy<ITokenizer>(() => TokenizerLoader.FromDirectory(RepoPaths.SharedFile(dir)))).Value;

    /// <summary>The tokenizer embedded in a GGUF file.</summary>
    public static ITokenizer Gguf(string path) =>
        Cache.GetOrAdd("gguf:" + path, _ => new Lazy<ITokenizer>(() =>
        {
            using var g = GgufFile.Open(path);
            return TokenizerLoader.FromGguf(g);
        })).Value;

    /// <summary>A llama.cpp test vocabulary by name.</summary>
    public static ITokenizer Vocab(string name) => Gguf(Path.Combine(TokenizerVectors.VocabDir, $"ggml-vocab-{name}.gguf"));

    public static ITokenizer Stories260k => Gguf(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
}
