using System.Buffers.Binary;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Models;
using KvSharp.Tests.Reference;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>Saving and loading the paged cache: round trips, refused files, atomic writes, model fingerprints.</summary>
public class PagedKvCacheFileTests
{
    private const int Layers = 3, Heads = 4, KvHeads = 2, HeadDim = 32, Row = KvHeads * HeadDim, QRow = Heads * HeadDim;
    private const string ModelA = "model A", ModelB = "model B";

    private static void Append(PagedKvCache cache, Random rng, int n)
    {
        for (int l = 0; l < Layers; l++) cache.Append(l, Gaussians(rng, n * Row), Gaussians(rng, n * Row), n);
    }

    /// <summary>
    /// Int4 keys / Int2 values, 100 tokens (3 blocks + a 4-token tail per head); layer 2 shares layer 0; layer 0 head 1
    /// has every third token re-quantized to F16/Int8 (so its blocks hold scattered positions, not in position order); a fork (whose blocks are shared with its parent) evicts from layer 1 and is
    /// saved. The loaded cache attends bit-identically, has the same positions, bytes, formats and share map, owns
    /// its blocks, and stays identical after both append the same tokens (the tail and residual state came back).
    /// </summary>
    [Fact]
    public void RoundTrip_MixedFormatsEvictionSharingTail_AttendsBitIdentically()
    {
        var rng = new Random(5);
        using var dir = new TempDir();
        string path = dir.File("cache.kvc");
        using var parent = new PagedKvCache(Layers, Heads, KvHeads, HeadDim,
            new PagedKvCacheOptions { KeyFormat = KvFormat.Int4, ValueFormat = KvFormat.Int2, MaxTokens = 200 });
        parent.ShareLayer(2, 0);
        Append(parent, rng, 100);
        parent.Requantize(0, 1, Enumerable.Range(0, 100).Select(p => p % 3 == 0).ToArray(), KvFormat.F16, KvFormat.Int8);
        var firsts = parent.Blocks(0, 1).Select(e => e.FirstPosition).ToArray();
        Assert.NotEqual(firsts.Order(), firsts); // the file must carry blocks out of position order
        using var saved = parent.Fork();
        saved.Evict(1, 0, Enumerable.Range(0, 100).Where(_ => rng.Next(3) == 0).ToHashSet());
        saved.Save(path, ModelA);

        using var loaded = PagedKvCache.Load(path, ModelA);
        AssertSame(saved, loaded, rng, "loaded");
        Assert.Equal(saved.Options, loaded.Options);
        Assert.Equal(0, loaded.SharedLayerSource(2));
        parent.Dispose(); // now the pools hold the saved fork's blocks only: the loaded cache has its own copy of each
        Assert.Equal(saved.PoolLiveBytes, loaded.PoolLiveBytes);
        Assert.True(saved.BytesByFormat(0, 1).ContainsKey(KvFormat.Int8));

        var k = Gaussians(rng, 45 * Row); var v = Gaussians(rng, 45 * Row);
        foreach (var c in new[] { saved, loaded })
            for (int l = 0; l < Layers; l++) c.Append(l, k, v, 45);
        AssertSame(saved, loaded, rng, "both appended 45 tokens");

        using var roomier = PagedKvCache.Load(path, ModelA, maxTokens: 300);
        Assert.Equal(300, roomier.Options.MaxTokens);
        var e = Assert.Throws<KvSharpException>(() => PagedKvCache.Load(path, ModelA, maxTokens: 50));
        Assert.Contains("100 tokens", e.Message);
    }

    private static void AssertSame(PagedKvCache expected, PagedKvCache actual, Random rng, string where)
    {
        Assert.Equal(expected.Length, actual.Length);
        Assert.Equal(expected.ByteCount, actual.ByteCount);
        Assert.Equal(expected.BytesByFormat().OrderBy(p => p.Key), actual.BytesByFormat().OrderBy(p => p.Key));
        for (int l = 0; l < Layers; l++)
        {
            Assert.Equal(expected.SharedLayerSource(l), actual.SharedLayerSource(l));
            for (int g = 0; g < KvHeads; g++)
            {
                Assert.Equal(expected.Positions(l, g), actual.Positions(l, g));
                Assert.Equal(expected.BytesByLayerHead(l, g), actual.BytesByLayerHead(l, g));
            }
            foreach (int n in new[] { 1, 40 })
            {
                int first = expected.Length - n;
                var q = Gaussians(rng, n * QRow, 2);
                var a = new float[n * QRow]; var b = new float[n * QRow];
                expected.Attend(l, q, n, first, a);
                actual.Attend(l, q, n, first, b);
                Assert.True(a.AsSpan().SequenceEqual(b), $"{where}: layer {l}, queries {first}+{n} differ");
            }
        }
    }

    private static (TempDir Dir, string Path, byte[] Bytes) SavedFile()
    {
        var rng = new Random(8);
        var dir = new TempDir();
        string path = dir.File("cache.kvc");
        using var cache = new PagedKvCache(Layers, Heads, KvHeads, HeadDim, new PagedKvCacheOptions { KeyFormat = KvFormat.Int8, MaxTokens = 100 });
        Append(cache, rng, 40);
        cache.Save(path, ModelA);
        return (dir, path, File.ReadAllBytes(path));
    }

    public static IEnumerable<object[]> Corruptions() =>
    [
        ["flipped payload byte", "corrupt (payload checksum"],
        ["flipped checksum byte", "corrupt (payload checksum"],
        ["truncated", "truncated KV cache file"],
        ["shorter than the header", "truncated KV cache file"],
        ["bytes appended", "bytes after its end"],
        ["wrong magic", "not a KvSharp KV cache file"],
        ["version 1", "version 1 was written by an older KvSharp"],
        ["version 3", "unsupported KV cache file version 3"],
        ["other model", $"saved for model {ModelA}, this is model {ModelB}"],
        ["missing", "cannot read KV cache file"],
    ];

    /// <summary>Each damaged or foreign file is refused with a message naming the file and the problem.</summary>
    [Theory]
    [MemberData(nameof(Corruptions))]
    public void DamagedOrForeignFile_IsRefused(string damage, string message)
    {
        var (dir, path, bytes) = SavedFile();
        using var _ = dir;
        string fingerprint = ModelA;
        switch (damage)
        {
            case "flipped payload byte": bytes[bytes.Length / 2] ^= 0x10; break;
            case "flipped checksum byte": bytes[^3] ^= 1; break;
            case "truncated": bytes = bytes[..^100]; break;
            case "shorter than the header": bytes = bytes[..12]; break;
            case "bytes appended": bytes = [.. bytes, 0]; break;
            case "wrong magic": bytes[0] = (byte)'X'; break;
            case "version 1": BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), 1); break;
            case "version 3": BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), 3); break;
            case "other model": fingerprint = ModelB; break;
            case "missing": File.Delete(path); bytes = []; break;
        }
        if (damage != "missing") File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<KvSharpException>(() => PagedKvCache.Load(path, fingerprint));
        Assert.StartsWith(path, e.Message);
        Assert.Contains(message, e.Message);
    }

    /// <summary>A model of another shape is refused by its shape, before any block is read.</summary>
    [Fact]
    public void OtherShape_IsRefused()
    {
        var (dir, path, _) = SavedFile();
        using var _ = dir;
        var config = ReferenceModels.RandomConfig("gqa2-halfsplit-tied");
        var e = Assert.Throws<KvSharpException>(() => PagedKvCache.Load(path, config, ModelA));
        Assert.Contains("does not match the model's (2 layers, 4 heads, 2 KV heads, head dimension 16)", e.Message);
    }

    /// <summary>
    /// A write that fails halfway leaves the good file as it was and no temporary file behind; a temporary file left by
    /// a killed writer is never read in place of the file.
    /// </summary>
    [Fact]
    public void InterruptedWrite_NeverReplacesAGoodFile()
    {
        var (dir, path, bytes) = SavedFile();
        using var _ = dir;
        var e = Assert.Throws<KvSharpException>(() => PagedKvCacheFile.WriteAtomically(path, s =>
        {
            s.Write(new byte[5000]);
            throw new IOException("disk full");
        }));
        Assert.Contains("disk full", e.Message);
        Assert.Equal(bytes, File.ReadAllBytes(path));
        Assert.Equal(["cache.kvc"], Directory.GetFiles(dir.Path).Select(Path.GetFileName));

        File.WriteAllBytes(Path.Combine(dir.Path, ".cache.kvc.0123456789abcdef0123456789abcdef.tmp"), bytes[..1000]); // a killed writer's leftovers
        using var loaded = PagedKvCache.Load(path, ModelA);
        Assert.Equal(40, loaded.Length);
    }

    /// <summary>
    /// A real forward: save after a 30-token prompt, load against the model's fingerprint and config, and decode on
    /// both: identical logits (the loaded cache is a drop-in continuation). Models with other weights have other fingerprints.
    /// </summary>
    [Fact]
    public void SavedPrompt_ContinuesIdenticallyAfterLoad()
    {
        using var model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig("gqa2-halfsplit-tied"));
        using var other = ReferenceModels.CreateRandom(model.Config, seed: 2);
        using var same = ReferenceModels.CreateRandom(model.Config);
        string fingerprint = KvCacheFingerprint.Of(model.Weights);
        Assert.NotEqual(fingerprint, KvCacheFingerprint.Of(other.Weights));
        Assert.Equal(fingerprint, KvCacheFingerprint.Of(same.Weights));
        Assert.Contains("2 layers, 4 heads, 2 KV heads, head dim 16", fingerprint);

        using var dir = new TempDir();
        var tokens = ReferenceModels.RandomTokens(36, model.Config.VocabSize);
        var engine = new Transformer(model.Weights);
        using var cache = new PagedKvCache(model.Config, new PagedKvCacheOptions { KeyFormat = KvFormat.Int8, ValueFormat = KvFormat.Int4, BlockTokens = 8, MaxTokens = 64 });
        engine.Forward(tokens.AsSpan(0, 30), cache);
        cache.Save(dir.File("prompt.kvc"), fingerprint);
        using var loaded = PagedKvCache.Load(dir.File("prompt.kvc"), model.Config, fingerprint);
        for (int t = 30; t < tokens.Length; t++)
            Assert.Equal(engine.Forward(tokens.AsSpan(t, 1), cache), engine.Forward(tokens.AsSpan(t, 1), loaded));
        var e = Assert.Throws<KvSharpException>(() => PagedKvCache.Load(dir.File("prompt.kvc"), model.Config, KvCacheFingerprint.Of(other.Weights)));
        Assert.Contains("saved for model", e.Message);
    }
}
