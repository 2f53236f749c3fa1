using System.Text;
using KvSharp.Formats.Gguf;
using KvSharp.Tokenization;

namespace KvSharp.Tests.Tokenization;

/// <summary>Loader errors on small hand-written GGUF files.</summary>
public sealed class GgufLoaderErrorTests : IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"kvsharp-tok-{Guid.NewGuid():N}.gguf");

    public void Dispose() => File.Delete(_path);

    /// <summary>Writes a GGUF v3 file with no tensors and the given metadata (string, string[] or uint values).</summary>
    private string Write(params (string Key, object Value)[] kv)
    {
        using var w = new BinaryWriter(File.Create(_path));
        void Str(string s) { var b = Encoding.UTF8.GetBytes(s); w.Write((ulong)b.Length); w.Write(b); }
        w.Write(0x46554747u);
        w.Write(3u);
        w.Write(0UL);
        w.Write((ulong)kv.Length);
        foreach (var (key, value) in kv)
        {
            Str(key);
            switch (value)
            {
                case string s: w.Write((uint)GgufValueType.String); Str(s); break;
                case uint u: w.Write((uint)GgufValueType.UInt32); w.Write(u); break;
                case string[] a:
                    w.Write((uint)GgufValueType.Array); w.Write((uint)GgufValueType.String); w.Write((ulong)a.Length);
                    foreach (var s in a) Str(s);
                    break;
                default: throw new ArgumentException(value.GetType().Name);
            }
        }
        return _path;
    }

    [Fact]
    public void MissingTokenizerNamesFileAndKey()
    {
        using var g = GgufFile.Open(Write(("general.architecture", "llama")));
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromGguf(g));
        Assert.Contains(_path, e.Message);
        Assert.Contains("tokenizer.ggml.model", e.Message);
    }

    [Fact]
    public void UnknownPreTokenizerIsNamed()
    {
        using var g = GgufFile.Open(Write(("tokenizer.ggml.model", "gpt2"), ("tokenizer.ggml.pre", "no-such-pre"),
            ("tokenizer.ggml.tokens", new[] { "a", "b", "ab" }), ("tokenizer.ggml.merges", new[] { "a b" })));
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromGguf(g));
        Assert.Contains("no-such-pre", e.Message);
    }

    [Fact]
    public void OutOfRangeSpecialIdIsAnError()
    {
        using var g = GgufFile.Open(Write(("tokenizer.ggml.model", "llama"), ("tokenizer.ggml.tokens", new[] { "<unk>", "a" }),
            ("tokenizer.ggml.bos_token_id", 7u)));
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.FromGguf(g));
        Assert.Contains("bos_token_id", e.Message);
    }

    [Fact]
    public void MinimalGpt2VocabularyMerges()
    {
        // Hand-checked: "a b" ranks before "a a": "aab" → a|ab; "aaa" → aa|a (leftmost tie); " aab" → Ġa|ab.
        using var g = GgufFile.Open(Write(("tokenizer.ggml.model", "gpt2"), ("tokenizer.ggml.pre", "gpt-2"),
            ("tokenizer.ggml.tokens", new[] { "a", "b", "ab", "aa", "Ġ", "Ġa" }), ("tokenizer.ggml.merges", new[] { "a b", "a a", "Ġ a" })));
        var tok = TokenizerLoader.FromGguf(g);
        Assert.Equal([0, 2], tok.Encode("aab"));
        Assert.Equal([3, 0], tok.Encode("aaa"));
        Assert.Equal([5, 2], tok.Encode(" aab"));
        Assert.False(tok.AddsBos);
        Assert.Equal("aab", tok.Decode([0, 2]));
    }
}
