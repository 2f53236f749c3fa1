namespace KvSharp.Tests.Tokenization;

/// <summary>
/// 100 KB of English through each tokenizer family: the encoding is long and decodes back to the text. How fast it
/// encodes is measured by bench/KvSharp.Bench's <c>TokenizerBenchmarks</c> (docs/benchmarks.md), not here.
/// </summary>
public class LongTextTests
{
    private static string Text100K()
    {
        var sb = new System.Text.StringBuilder();
        foreach (var f in Directory.GetFiles(RepoPaths.SharedFile("data", "paul_graham_essays")).Order())
        {
            sb.Append(File.ReadAllText(f));
            if (sb.Length >= 100_000) break;
        }
        return sb.ToString(0, 100_000);
    }

    [Theory]
    [InlineData("llama3")]
    [InlineData("llama-spm")]
    [InlineData("tinystories")]
    public void Encodes100Kb_AndDecodesBack(string which)
    {
        var tok = which switch
        {
            "llama3" => TestTokenizers.Hf("tokenizers", "llama3"),
            "tinystories" => TestTokenizers.Hf("models", "tinystories-656k"),
            _ => TestTokenizers.Vocab(which),
        };
        string text = Text100K();
        var ids = tok.Encode(text, addSpecial: false);
        Assert.True(ids.Length > 15_000, $"{which}: only {ids.Length} tokens for 100 KB");
        if (which != "tinystories") Assert.Equal(text, tok.Decode(ids)); // its vocabulary lacks e.g. '%' and has no byte fallback
    }
}
