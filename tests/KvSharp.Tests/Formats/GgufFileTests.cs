using KvSharp.Formats;
using KvSharp.Formats.Gguf;

namespace KvSharp.Tests.Formats;

public class GgufFileTests
{
    [Fact]
    public void ReadsStories260kMetadataAndTensors()
    {
        using var f = GgufFile.Open(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        Assert.Equal("llama", f.Require<string>("general.architecture"));
        Assert.Equal(64u, f.Get<uint>("llama.embedding_length", 0));
        Assert.Equal(5u, f.Get<uint>("llama.block_count", 0));
        var emb = f.FindTensor("token_embd.weight");
        Assert.NotNull(emb);
        Assert.Equal(new long[] { 512, 64 }, emb!.Shape);
        Assert.Equal(GgmlType.F32, emb.Type);
        Assert.Equal(512, f.Require<string[]>("tokenizer.ggml.tokens").Length);
    }
}
