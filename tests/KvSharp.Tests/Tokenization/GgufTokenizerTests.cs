using System.Text.Json;
using KvSharp.Formats.Gguf;
using KvSharp.Tokenization;

namespace KvSharp.Tests.Tokenization;

public class GgufTokenizerTests
{
    public static TheoryData<string> SupportedVocabs => new()
    {
        "llama-spm", "phi-3", "gpt-2", "mpt", "starcoder", "refact", "falcon", "deepseek-llm", "deepseek-coder",
    };

    [Theory]
    [MemberData(nameof(SupportedVocabs))]
    public void ReproducesLlamaCppVectors(string name)
    {
        var tok = TestTokenizers.Vocab(name);
        var bad = TokenizerVectors.Mismatches(tok, TokenizerVectors.Load(name));
        Assert.True(bad.Count == 0, $"{bad.Count} mismatches:\n" + string.Join("\n", bad));
    }

    [Fact]
    public void Stories260kMatchesLlamaCppPromptIds()
    {
        var tok = TestTokenizers.Stories260k;
        Assert.Equal(512, tok.VocabSize);
        Assert.Equal(1, tok.BosId);
        Assert.Equal([2], tok.EosIds);
        Assert.True(tok.AddsBos);
        using var reference = JsonDocument.Parse(File.ReadAllText(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json")));
        int checkedPrompts = 0;
        foreach (var r in reference.RootElement.GetProperty("results").EnumerateArray())
        {
            string prompt = r.GetProperty("prompt").GetString()!;
            var expected = r.GetProperty("prompt_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            Assert.Equal(expected, tok.Encode(prompt));
            checkedPrompts++;
        }
        Assert.Equal(4, checkedPrompts);
    }

    [Fact]
    public void Stories260kDecodesGreedyContinuation()
    {
        var tok = TestTokenizers.Stories260k;
        using var reference = JsonDocument.Parse(File.ReadAllText(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json")));
        var r = reference.RootElement.GetProperty("results")[1];
        var ids = r.GetProperty("greedy_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        string expected = r.GetProperty("greedy_text").GetString()!;
        // llama.cpp renders the continuation piece by piece (no leading-space strip).
        string pieces = System.Text.Encoding.UTF8.GetString(ids.SelectMany(tok.TokenBytes).ToArray());
        Assert.Equal(expected, pieces);
    }

    [Fact]
    public void SpmRoundTripsVectorInputs()
    {
        var tok = TestTokenizers.Vocab("llama-spm");
        foreach (var (text, _) in TokenizerVectors.Load("llama-spm"))
            Assert.Equal(text, tok.Decode(tok.Encode(text, addSpecial: true, parseSpecial: false)));
    }

    [Fact]
    public void SpmParsesControlTokensOnlyWhenAsked()
    {
        var tok = TestTokenizers.Vocab("llama-spm");
        var parsed = tok.Encode("<s>Hello</s>", addSpecial: false, parseSpecial: true);
        Assert.Equal(1, parsed[0]);
        Assert.Equal(2, parsed[^1]);
        // After a control token the space prefix is added again: "Hello" → "▁Hello".
        Assert.Equal(tok.Encode("Hello", addSpecial: false), parsed[1..^1]);
        var literal = tok.Encode("<s>Hello</s>", addSpecial: false, parseSpecial: false);
        Assert.DoesNotContain(1, literal);
        Assert.DoesNotContain(2, literal);
        Assert.True(tok.IsSpecial(1));
        Assert.False(tok.IsSpecial(parsed[1]));
        // Like llama.cpp, only a space prefix at the very start is dropped; BOS comes first here.
        Assert.Equal("<s> Hello</s>", tok.Decode(parsed, skipSpecial: false));
        Assert.Equal("Hello", tok.Decode(parsed));
    }

    [Fact]
    public void GgufWithoutTokenizerIsAnError()
    {
        // A vocabulary file whose model we do not support names the file and key.
        using var gguf = GgufFile.Open(Path.Combine(TokenizerVectors.VocabDir, "ggml-vocab-bert-bge.gguf"));
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromGguf(gguf));
        Assert.Contains("ggml-vocab-bert-bge.gguf", e.Message);
        Assert.Contains("tokenizer.ggml.model", e.Message);
    }
}
