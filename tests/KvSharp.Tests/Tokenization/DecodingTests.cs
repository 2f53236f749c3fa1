using System.Text;
using KvSharp.Tokenization;

namespace KvSharp.Tests.Tokenization;

public class DecodingTests
{
    [Fact]
    public void StreamHoldsBackPartialCharactersOfByteFallbackTokens()
    {
        var tok = TestTokenizers.Vocab("llama-spm");
        const string text = "Hi 🦙 and 😁!";
        var ids = tok.Encode(text, addSpecial: true);
        // The emoji are not in the vocabulary: each is spelled by four <0xXX> tokens.
        var byteTokens = ids.Where(id => ((VocabTokenizer)tok).Kind(id) == TokenKind.Byte).ToArray();
        Assert.Equal(8, byteTokens.Length);
        Assert.Equal([0xF0], tok.TokenBytes(byteTokens[0]));

        var stream = new Utf8StreamDecoder(tok);
        var parts = ids.Select(stream.Push).ToList();
        parts.Add(stream.Flush());
        Assert.Equal(text, string.Concat(parts));
        Assert.DoesNotContain(parts, p => p.Contains('\uFFFD'));
        // The three pushes before an emoji's last byte yield nothing.
        int first = Array.IndexOf(ids, byteTokens[0]);
        Assert.Equal(["", "", ""], parts.Skip(first).Take(3));
        Assert.Equal("🦙", parts[first + 3]);
    }

    [Fact]
    public void StreamOfByteLevelTokensMatchesDecode()
    {
        var tok = TestTokenizers.Hf("tokenizers", "llama3");
        const string text = "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～ កាន់តែពិសេស";
        var ids = tok.Encode(text, addSpecial: false);
        var stream = new Utf8StreamDecoder(tok);
        var parts = ids.Select(stream.Push).Append(stream.Flush()).ToList();
        Assert.Equal(text, string.Concat(parts));
        Assert.Equal(text, tok.Decode(ids));
        Assert.DoesNotContain(parts, p => p.Contains('\uFFFD'));
    }

    [Fact]
    public void RawByteStreamSplitsAnywhere()
    {
        const string text = "aé€😀z";
        var bytes = Encoding.UTF8.GetBytes(text);
        var d = new Utf8StreamDecoder();
        var sb = new StringBuilder();
        var outputs = new List<string>();
        foreach (byte b in bytes) outputs.Add(d.Push([b]));
        outputs.Add(d.Flush());
        Assert.Equal(text, string.Concat(outputs));
        // a | é (2 bytes) | € (3 bytes) | 😀 (4 bytes) | z : one output per completed character.
        Assert.Equal(["a", "", "é", "", "", "€", "", "", "", "😀", "z", ""], outputs);
    }

    [Fact]
    public void TruncatedSequenceFlushesAsReplacementCharacter()
    {
        var d = new Utf8StreamDecoder();
        Assert.Equal("", d.Push([0xF0, 0x9F]));
        Assert.Equal("\uFFFD", d.Flush());
    }

    [Fact]
    public void SpmTokenBytesMapMetaspaceAndBytes()
    {
        var tok = (VocabTokenizer)TestTokenizers.Stories260k;
        int id = tok.Encode("Once", addSpecial: false)[0];
        Assert.StartsWith("\u2581", tok.TokenText(id));
        Assert.Equal((byte)' ', tok.TokenBytes(id)[0]);
        Assert.Equal([0x0A], tok.TokenBytes(13)); // <0x0A>
        Assert.Equal("<s>"u8.ToArray(), tok.TokenBytes(1));
        Assert.True(tok.IsSpecial(1));
        Assert.False(tok.IsSpecial(13));
    }

    [Fact]
    public void ByteLevelTokenBytesUseTheByteTable()
    {
        var tok = (VocabTokenizer)TestTokenizers.Hf("tokenizers", "llama3");
        // Llama-3: 220 = "Ġ" (space), 198 = "Ċ" (newline), 9906 = "Hello".
        Assert.Equal("Ġ", tok.TokenText(220));
        Assert.Equal(" "u8.ToArray(), tok.TokenBytes(220));
        Assert.Equal("\n"u8.ToArray(), tok.TokenBytes(198));
        Assert.Equal("Hello"u8.ToArray(), tok.TokenBytes(9906));
        Assert.Equal("<|begin_of_text|>"u8.ToArray(), tok.TokenBytes(128000));
    }

    [Fact]
    public void BadIdIsAnInputError()
    {
        var tok = TestTokenizers.Stories260k;
        Assert.Throws<KvSharpException>(() => tok.TokenBytes(512));
        Assert.Throws<KvSharpException>(() => tok.Decode([-1]));
    }
}
