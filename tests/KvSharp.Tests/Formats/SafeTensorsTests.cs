using KvSharp.Formats;
using KvSharp.Formats.SafeTensors;

namespace KvSharp.Tests.Formats;

public unsafe class SafeTensorsTests
{
    [Fact]
    public void ReadsHandWrittenFileInPlace()
    {
        using var dir = new TempDir();
        string p = dir.File("m.safetensors");
        SafeTensorsFixture.Write(p, [
            new("a", "F32", [2, 2], SafeTensorsFixture.F32(1, 2, 3, 4)),
            new("b", "BF16", [3], [0x80, 0x3F, 0x00, 0x40, 0x40, 0xC0]), // 1, 2, -3 in bf16
            new("c", "F16", [1], [0x00, 0x3C]), // 1.0 in f16
        ]);
        using var f = SafeTensorsFile.Open(p);
        Assert.Equal(3, f.Tensors.Count);
        var a = f.FindTensor("a")!;
        Assert.Equal(GgmlType.F32, a.Type);
        Assert.Equal(new long[] { 2, 2 }, a.Shape);
        Assert.Equal(4f, ((float*)a.Data)[3]);
        var b = f.FindTensor("b")!;
        Assert.Equal(GgmlType.BF16, b.Type);
        Assert.Equal(-3f, BitConverter.Int32BitsToSingle(((ushort*)b.Data)[2] << 16));
        Assert.Equal(GgmlType.F16, f.FindTensor("c")!.Type);
        Assert.Equal("pt", f.Metadata["format"]);
    }

    [Fact]
    public void ReadsTinyStoriesSingleFile()
    {
        using var set = SafeTensorsSet.Open(RepoPaths.SharedFile("models", "tinystories-656k"));
        var lm = set.Find("lm_head.weight")!;
        Assert.Equal(new long[] { 2048, 128 }, lm.Shape);
        Assert.Null(set.Find("model.embed_tokens.weight"));
        Assert.Equal(1 + 2 * 9 + 1, set.Tensors.Count); // lm_head, 9 per layer, final norm
    }

    [Fact]
    public void ReadsNeedleShardsThroughIndex()
    {
        using var set = SafeTensorsSet.Open(RepoPaths.SharedFile("models", "kvsharp-needle-16m", "model.safetensors.index.json"));
        Assert.Equal(3, set.Files.Count);
        Assert.Equal(2 + 8 * 9, set.Tensors.Count);
        var emb = set.Find("model.embed_tokens.weight")!;
        Assert.Equal(GgmlType.BF16, emb.Type);
        Assert.Equal(new long[] { 8192, 384 }, emb.Shape);
        Assert.Equal(8192L * 384 * 2, emb.ByteLength);
    }

    [Fact]
    public void RejectsUnsupportedDtypeNamingTensorAndDtype()
    {
        using var dir = new TempDir();
        string p = dir.File("i.safetensors");
        SafeTensorsFixture.Write(p, [new("ids", "I64", [1], new byte[8])]);
        var e = Assert.Throws<ModelFormatException>(() => SafeTensorsFile.Open(p));
        Assert.Contains(p, e.Message);
        Assert.Contains("'ids'", e.Message);
        Assert.Contains("I64", e.Message);
    }

    [Fact]
    public void RejectsTruncatedFiles()
    {
        using var dir = new TempDir();
        string p = dir.File("t.safetensors");
        var bytes = SafeTensorsFixture.Write(p, [new("a", "F32", [4], SafeTensorsFixture.F32(1, 2, 3, 4))]);
        foreach (int cut in new[] { 4, 8, 20, bytes.Length - 1 })
        {
            string q = dir.File($"cut{cut}.safetensors");
            File.WriteAllBytes(q, bytes[..cut]);
            var e = Assert.Throws<ModelFormatException>(() => SafeTensorsFile.Open(q));
            Assert.Contains(q, e.Message);
            Assert.Contains("truncated", e.Message);
        }
    }

    [Fact]
    public void RejectsBadHeaders()
    {
        using var dir = new TempDir();
        string p = dir.File("bad.safetensors");
        SafeTensorsFixture.Write(p, [new("a", "F32", [4], SafeTensorsFixture.F32(1, 2, 3, 4))], j => j.Replace("{\"__", "{{\"__"));
        Assert.Contains("invalid JSON", Assert.Throws<ModelFormatException>(() => SafeTensorsFile.Open(p)).Message);

        // Offsets inconsistent with shape x dtype size.
        SafeTensorsFixture.Write(p, [new("a", "F32", [4], SafeTensorsFixture.F32(1, 2, 3, 4))], j => j.Replace("[4]", "[5]"));
        var e = Assert.Throws<ModelFormatException>(() => SafeTensorsFile.Open(p));
        Assert.Contains("'a'", e.Message);
        Assert.Contains("needs 20", e.Message);

        // Absurd header length.
        var junk = new byte[64];
        BitConverter.GetBytes(ulong.MaxValue / 3).CopyTo(junk, 0);
        File.WriteAllBytes(p, junk);
        Assert.Contains("header length", Assert.Throws<ModelFormatException>(() => SafeTensorsFile.Open(p)).Message);
    }

    [Fact]
    public void RejectsMissingShard()
    {
        using var dir = new TempDir();
        SafeTensorsFixture.Write(dir.File("s1.safetensors"), [new("a", "F32", [1], SafeTensorsFixture.F32(1))]);
        File.WriteAllText(dir.File("model.safetensors.index.json"),
            """{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}""");
        var e = Assert.Throws<ModelFormatException>(() => SafeTensorsSet.Open(dir.Path));
        Assert.Contains("s2.safetensors", e.Message);
        Assert.Contains("missing", e.Message);
        Assert.Contains("model.safetensors.index.json", e.Message);
    }
}
