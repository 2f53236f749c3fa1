using System.Text;
using KvSharp.Formats;
using KvSharp.Formats.Gguf;

namespace KvSharp.Tests.Formats;

public class GgufBadInputTests
{
    private static readonly byte[] Stories = File.ReadAllBytes(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));

    private static ModelFormatException OpenBad(TempDir dir, byte[] bytes, string name = "bad.gguf")
    {
        string p = dir.File(name);
        File.WriteAllBytes(p, bytes);
        var e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(p).Dispose());
        Assert.Contains(p, e.Message);
        return e;
    }

    [Theory]
    [InlineData(2)]        // inside the magic
    [InlineData(12)]       // inside the tensor count
    [InlineData(30)]       // inside the first key
    [InlineData(200)]      // inside metadata
    [InlineData(9000)]     // inside the token array
    [InlineData(14000)]    // inside tensor infos (after the vocabulary)
    [InlineData(600000)]   // inside tensor data
    [InlineData(1054239)]  // one byte short
    public void TruncatedFilesAreReported(int cut)
    {
        using var dir = new TempDir();
        var e = OpenBad(dir, Stories[..cut]);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void CorruptMagicIsReported()
    {
        using var dir = new TempDir();
        var b = (byte[])Stories.Clone();
        b[0] = (byte)'X';
        Assert.Contains("bad magic", OpenBad(dir, b).Message);
    }

    [Fact]
    public void UnsupportedVersionIsReported()
    {
        using var dir = new TempDir();
        var b = (byte[])Stories.Clone();
        BitConverter.GetBytes(7u).CopyTo(b, 4);
        Assert.Contains("version 7", OpenBad(dir, b).Message);
    }

    private static int TensorInfoOffset(byte[] file, string name)
    {
        // A tensor info is: u64 name length, name, u32 n_dims, n_dims x u64, u32 type, u64 offset.
        var needle = BitConverter.GetBytes((ulong)name.Length).Concat(Encoding.UTF8.GetBytes(name)).ToArray();
        int i = file.AsSpan().IndexOf(needle);
        Assert.True(i > 0);
        return i + needle.Length;
    }

    [Fact]
    public void UnknownTensorTypeIsReported()
    {
        using var dir = new TempDir();
        var b = (byte[])Stories.Clone();
        int at = TensorInfoOffset(b, "blk.0.attn_norm.weight"); // 1-D
        BitConverter.GetBytes(77u).CopyTo(b, at + 4 + 8);
        var e = OpenBad(dir, b);
        Assert.Contains("blk.0.attn_norm.weight", e.Message);
        Assert.Contains("unknown tensor type 77", e.Message);
    }

    [Fact]
    public void AbsurdCountsAreReported()
    {
        using var dir = new TempDir();
        var b = (byte[])Stories.Clone();
        BitConverter.GetBytes(1UL << 50).CopyTo(b, 8); // tensor count
        Assert.Contains("corrupt header", OpenBad(dir, b, "t.gguf").Message);

        b = (byte[])Stories.Clone();
        BitConverter.GetBytes(ulong.MaxValue).CopyTo(b, 16); // metadata count
        Assert.Contains("corrupt header", OpenBad(dir, b, "k.gguf").Message);

        b = (byte[])Stories.Clone();
        int at = TensorInfoOffset(b, "token_embd.weight");
        BitConverter.GetBytes(1UL << 39).CopyTo(b, at + 4);      // ne[0]
        BitConverter.GetBytes(1UL << 39).CopyTo(b, at + 4 + 8);  // ne[1]: 2^78 elements overflow a long
        var e = OpenBad(dir, b, "d.gguf");
        Assert.Contains("token_embd.weight", e.Message);

        b = (byte[])Stories.Clone();
        int tokens = b.AsSpan().IndexOf("tokenizer.ggml.tokens"u8) + "tokenizer.ggml.tokens".Length;
        BitConverter.GetBytes(1UL << 60).CopyTo(b, tokens + 4 + 4); // after value type ARRAY and element type STRING
        var e2 = OpenBad(dir, b, "a.gguf");
        Assert.Contains("tokenizer.ggml.tokens", e2.Message);
    }

    [Fact]
    public void EmptyAndMissingFilesAreReported()
    {
        using var dir = new TempDir();
        Assert.Contains("empty", OpenBad(dir, []).Message);
        var missing = dir.File("missing.gguf");
        Assert.Contains("not found", Assert.Throws<ModelFormatException>(() => GgufFile.Open(missing)).Message);
    }
}
