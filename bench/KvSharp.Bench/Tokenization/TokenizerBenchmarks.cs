using BenchmarkDotNet.Attributes;
using KvSharp.Bench.EndToEnd;
using KvSharp.Formats.Gguf;
using KvSharp.Tokenization;

namespace KvSharp.Bench.Tokenization;

/// <summary>
/// Encoding 100 KB of English (the first Paul Graham essays of ../shared/data) with each tokenizer family: Llama-3's
/// byte-level BPE (Hugging Face tokenizer.json), llama.cpp's SentencePiece test vocabulary (GGUF) and TinyStories' BPE.
/// The setup encodes the text once, so the timed calls find the tokenizer's word cache warm (a new tokenizer per
/// iteration would time the vocabulary load instead); the cold first encode is printed by the setup.
/// </summary>
[MemoryDiagnoser]
public class TokenizerBenchmarks
{
    private ITokenizer _tokenizer = null!;
    private string _text = "";

    /// <summary>Which tokenizer.</summary>
    [Params("llama3", "llama-spm", "tinystories")]
    public string Tokenizer { get; set; } = "llama3";

    /// <summary>Loads the tokenizer and the text, and encodes once.</summary>
    [GlobalSetup]
    public void Setup()
    {
        string shared = Path.Combine(LongContextDecodeBench.FindRepo(), "..", "shared");
        _tokenizer = Tokenizer switch
        {
            "llama3" => TokenizerLoader.FromDirectory(Path.Combine(shared, "tokenizers", "llama3")),
            "tinystories" => TokenizerLoader.FromDirectory(Path.Combine(shared, "models", "tinystories-656k")),
            _ => FromGguf(Path.Combine(shared, "tokenizers", "llamacpp_vocab", $"ggml-vocab-{Tokenizer}.gguf")),
        };
        var text = new System.Text.StringBuilder();
        foreach (var f in Directory.GetFiles(Path.Combine(shared, "data", "paul_graham_essays")).Order())
        {
            text.Append(File.ReadAllText(f));
            if (text.Length >= 100_000) break;
        }
        _text = text.ToString(0, 100_000);
        var cold = System.Diagnostics.Stopwatch.StartNew();
        int tokens = _tokenizer.Encode(_text, addSpecial: false).Length;
        Console.WriteLine($"// {Tokenizer}: first (cold) encode of 100 KB: {tokens} tokens in {cold.Elapsed.TotalMilliseconds:F0} ms");
    }

    /// <summary>Token ids of the 100 KB.</summary>
    [Benchmark]
    public int Encode100Kb() => _tokenizer.Encode(_text, addSpecial: false).Length;

    private static ITokenizer FromGguf(string path)
    {
        using var gguf = GgufFile.Open(path);
        return TokenizerLoader.FromGguf(gguf);
    }
}
