using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>Eviction, truncation and forks against the test's reference model and hand-counted block sizes.</summary>
public class PagedKvCacheEvictionTests
{
    private const int HeadDim = 32, KvHeads = 2, Group = 2, Heads = KvHeads * Group, Row = KvHeads * HeadDim, QRow = Heads * HeadDim;

    private static (PagedKvCache Cache, ReferenceKv Reference) Build(KvFormat format, Random rng, int tokens, int layers = 1)
    {
        var cache = new PagedKvCache(layers, Heads, KvHeads, HeadDim, new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = 400 });
        var reference = new ReferenceKv(layers, Heads, KvHeads, HeadDim);
        Append(cache, reference, format, rng, tokens);
        return (cache, reference);
    }

    private static void Append(PagedKvCache cache, ReferenceKv reference, KvFormat format, Random rng, int n)
    {
        for (int l = 0; l < cache.Layers; l++)
        {
            // Values representable in the float format: storing them is exact, so the reference needs no codec.
            var k = Representable(Gaussians(rng, n * Row), format, HeadDim);
            var v = Representable(Gaussians(rng, n * Row), format, HeadDim);
            cache.Append(l, k, v, n); reference.Append(l, k, v, n);
        }
    }

    private static void AssertAttention(PagedKvCache cache, ReferenceKv reference, Random rng, string where, double tol = 1e-5)
    {
        Assert.Equal(reference.Length, cache.Length);
        for (int l = 0; l < cache.Layers; l++)
        {
            for (int g = 0; g < KvHeads; g++)
                Assert.Equal(reference.Head(l, g).Select(t => t.Pos), cache.Positions(l, g));
            if (cache.Length == 0) continue;
            // The last few positions (decode-like), then up to 40 at once: one Attend of many positions runs
            // in multi-position passes over the blocks, whose per-row masks must respect the evicted gaps.
            foreach (int n in new[] { Math.Min(cache.Length, 6), Math.Min(cache.Length, 40) })
            {
                int first = cache.Length - n;
                var q = Gaussians(rng, n * QRow, 2);
                var actual = new float[n * QRow];
                cache.Attend(l, q, n, first, actual);
                AssertClose(reference.Attend(l, q, n, first), actual, tol, $"{where}, layer {l}, queries {first}+{n}");
            }
        }
    }

    public static IEnumerable<object[]> FloatFormats() =>
        new[] { KvFormat.F32, KvFormat.F16, KvFormat.BF16, KvFormat.Fp8E4M3 }.Select(f => new object[] { f });

    /// <summary>Evicting a random subset: attention over the kept tokens at their original positions.</summary>
    [Theory]
    [MemberData(nameof(FloatFormats))]
    public void EvictRandomSubset_AttendsOverKeptTokens(KvFormat format)
    {
        var rng = new Random(3 + (int)format);
        var (cache, reference) = Build(format, rng, 150);
        using var _ = cache;
        for (int g = 0; g < KvHeads; g++)
        {
            var evict = Enumerable.Range(0, 150).Where(_ => rng.Next(3) == 0).ToHashSet();
            cache.Evict(0, g, evict); reference.Evict(0, g, evict);
        }
        AssertAttention(cache, reference, rng, "after eviction");
        Append(cache, reference, format, rng, 45);
        AssertAttention(cache, reference, rng, "appended after eviction");
    }

    /// <summary>
    /// 128 tokens = 4 blocks per head. Evicting block 1 whole and half of block 2 leaves 16 kept tokens in that run,
    /// re-encoded into one block: 3 blocks remain, so bytes drop by one key+value block and the pool by 2 blocks.
    /// </summary>
    [Fact]
    public void Evict_FreesBlocks()
    {
        var rng = new Random(9);
        var (cache, reference) = Build(KvFormat.Int4, rng, 128);
        using var _ = cache;
        var kl = BlockLayout.ForKeys(KvFormat.Int4, HeadDim); var vl = BlockLayout.ForValues(KvFormat.Int4, HeadDim);
        long pair = kl.ByteSize + vl.ByteSize;
        Assert.Equal(KvHeads * 4 * pair, cache.ByteCount);
        Assert.Equal(KvHeads * 8, cache.PoolLiveBlocks);
        long live = cache.PoolLiveBytes;
        cache.Evict(0, 1, Enumerable.Range(32, 48).ToHashSet());
        Assert.Equal(KvHeads * 4 * pair - pair, cache.ByteCount);
        Assert.Equal(3 * pair, cache.BytesByLayerHead(0, 1));
        Assert.Equal(KvHeads * 8 - 2, cache.PoolLiveBlocks);
        Assert.True(cache.PoolLiveBytes < live);
        Assert.Equal(Enumerable.Range(0, 32).Concat(Enumerable.Range(80, 48)), cache.Positions(0, 1));
        Assert.Equal(128, cache.Length); // eviction does not move the sequence
    }

    /// <summary>
    /// Fork, then different continuations: parent and child each equal a fresh cache built from its own history
    /// (exactly, even for Int4: block boundaries depend only on the token count), and blocks shared by the fork
    /// are allocated once.
    /// </summary>
    [Fact]
    public void Fork_ContinuationsEqualFreshCaches()
    {
        const KvFormat format = KvFormat.Int4;
        var rng = new Random(21);
        var options = new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format, MaxTokens = 400 };
        int history = 80;
        var h = (K: Gaussians(rng, history * Row), V: Gaussians(rng, history * Row));
        var a = (K: Gaussians(rng, 30 * Row), V: Gaussians(rng, 30 * Row));
        var b = (K: Gaussians(rng, 50 * Row), V: Gaussians(rng, 50 * Row));
        using var parent = new PagedKvCache(1, Heads, KvHeads, HeadDim, options);
        parent.Append(0, h.K, h.V, history);
        long liveBefore = parent.PoolLiveBytes, bytes = parent.ByteCount;
        using var child = parent.Fork();
        Assert.Equal(liveBefore, parent.PoolLiveBytes); // shared, counted once
        Assert.Equal(bytes, child.ByteCount);
        parent.Append(0, a.K, a.V, 30);
        child.Append(0, b.K, b.V, 50);

        foreach (var (cache, cont, n) in new[] { (parent, a, 30), (child, b, 50) })
        {
            using var fresh = new PagedKvCache(1, Heads, KvHeads, HeadDim, options);
            fresh.Append(0, h.K.Concat(cont.K).ToArray(), h.V.Concat(cont.V).ToArray(), history + n);
            var q = Gaussians(rng, 4 * QRow);
            var expected = new float[4 * QRow]; var actual = new float[4 * QRow];
            fresh.Attend(0, q, 4, history + n - 4, expected);
            cache.Attend(0, q, 4, history + n - 4, actual);
            Assert.Equal(expected, actual);
            Assert.Equal(fresh.ByteCount, cache.ByteCount);
        }
        child.Dispose();
        parent.Attend(0, Gaussians(rng, QRow), 1, 109, new float[QRow]); // pools outlive the child
    }

    /// <summary>
    /// Copy-on-write: evicting (by mask) in a fork rebuilds only the fork's affected blocks; the parent still attends
    /// over all its tokens, and the pools hold the shared blocks once plus the fork's fresh ones.
    /// </summary>
    [Fact]
    public void EvictInFork_LeavesParentIntact()
    {
        var rng = new Random(41);
        var (parent, reference) = Build(KvFormat.BF16, rng, 96); // 3 blocks per head
        using var _ = parent;
        using var child = parent.Fork();
        var childReference = reference.Clone();
        long blocks = parent.PoolLiveBlocks;
        var mask = new bool[96];
        mask[40] = mask[41] = true; // inside block 1 of head 0: that block is re-encoded for the child only
        child.Evict(0, 0, mask);
        childReference.Evict(0, 0, new HashSet<int> { 40, 41 });
        Assert.Equal(blocks + 2, parent.PoolLiveBlocks); // one new key + value block; the old pair stays with the parent
        AssertAttention(parent, reference, rng, "parent after the fork's eviction");
        AssertAttention(child, childReference, rng, "fork after eviction");
        Assert.Throws<ArgumentException>(() => child.Evict(0, 0, new bool[3]));
    }

    /// <summary>Truncate then append: equals a fresh cache of the shorter history plus the new tokens; freed blocks leave the pool.</summary>
    [Fact]
    public void Truncate_EqualsFreshHistory_AndFreesBlocks()
    {
        const KvFormat format = KvFormat.F16;
        var rng = new Random(33);
        var (cache, reference) = Build(format, rng, 150, layers: 2);
        using var _ = cache;
        using var fork = cache.Fork(); // truncating the parent must not disturb shared blocks
        var forkReference = reference.Clone();
        long blocks = cache.PoolLiveBlocks;
        cache.Truncate(70); reference.Truncate(70);
        Assert.Equal(blocks, cache.PoolLiveBlocks); // the fork still holds them
        AssertAttention(cache, reference, rng, "truncated");
        Append(cache, reference, format, rng, 30);
        AssertAttention(cache, reference, rng, "truncated and appended");
        AssertAttention(fork, forkReference, rng, "fork of the untruncated cache");
        fork.Truncate(40); forkReference.Truncate(40);
        Assert.True(cache.PoolLiveBlocks < blocks);
        AssertAttention(fork, forkReference, rng, "fork truncated");
    }

    /// <summary>
    /// 200 random operations (append 1..40, evict random subsets of random heads, re-quantize scattered random subsets
    /// to random float and integer formats, truncate, fork and dispose one side, save and load; from step 100 layer 1
    /// shares layer 0's storage) against the reference model. After every operation the reference replays what the
    /// cache's new blocks did to their tokens (each new block's codec round trip of its tokens, in its formats; kept
    /// blocks are never re-encoded), so it is exact for every format and the cache must match it: positions, decoded
    /// keys and values bit for bit, and attention within float32 rounding. The layout is checked too: positions ascend
    /// inside each block, each (head, format pair) has at most one partial block, and the bytes are those of
    /// ⌈tokens / 32⌉ blocks per format pair plus the float tail — scattered re-quantization packs tokens densely.
    /// </summary>
    [Theory]
    [InlineData(KvFormat.F32)]
    [InlineData(KvFormat.F16)]
    [InlineData(KvFormat.Fp8E4M3)]
    [InlineData(KvFormat.Int8)]
    [InlineData(KvFormat.Int4)]
    public void RandomOperations_MatchReferenceModel(KvFormat format)
    {
        var rng = new Random(77 + (int)format);
        var (cache, reference) = Build(format, rng, 10, layers: 2);
        var known = new HashSet<object>(ReferenceEqualityComparer.Instance);
        ReplayNewBlocks(cache, reference, known);
        using var dir = new TempDir();
        try
        {
            for (int step = 0; step < 200; step++)
            {
                int op = rng.Next(13);
                string what;
                // Halfway, layer 1 starts reading layer 0's storage: from then on only layer 0 is evicted or re-quantized.
                int mutable = cache.SharedLayerSource(1) >= 0 ? 1 : 2;
                if (step == 100)
                {
                    cache.ShareLayer(1, 0); reference.Share(1, 0);
                    what = "share layer 0 with layer 1";
                }
                else if (op is 10 or 11)
                {
                    int l = rng.Next(mutable), g = rng.Next(KvHeads);
                    var targets = new[] { KvFormat.F32, KvFormat.F16, KvFormat.BF16, KvFormat.Fp8E4M3, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2 };
                    var (kf, vf) = (targets[rng.Next(targets.Length)], targets[rng.Next(targets.Length)]);
                    var select = cache.Positions(l, g).Select(_ => rng.Next(3) == 0).ToArray();
                    cache.Requantize(l, g, select, kf, vf);
                    what = $"requantize {select.Count(x => x)} of layer {l} head {g} to {kf}:{vf}";
                }
                else if (op == 12)
                {
                    string path = dir.File($"step{step}.kvc");
                    cache.Save(path, "random");
                    var loaded = PagedKvCache.Load(path, "random");
                    cache.Dispose(); cache = loaded; known.Clear(); // loaded blocks are fresh copies of the same bytes
                    foreach (var e in Enumerable.Range(0, 2 * KvHeads).SelectMany(i => cache.Blocks(i / KvHeads, i % KvHeads))) known.Add(e.Positions);
                    what = "save and load";
                }
                else if (op < 5 && cache.Length < 360)
                {
                    int n = rng.Next(1, 41);
                    Append(cache, reference, format, rng, n);
                    what = $"append {n}";
                }
                else if (op < 7)
                {
                    int l = rng.Next(mutable), g = rng.Next(KvHeads);
                    var positions = cache.Positions(l, g);
                    var evict = positions.Where(_ => rng.Next(4) == 0).ToHashSet();
                    cache.Evict(l, g, evict); reference.Evict(l, g, evict);
                    what = $"evict {evict.Count} of layer {l} head {g}";
                }
                else if (op < 9)
                {
                    int length = rng.Next(cache.Length + 1);
                    cache.Truncate(length); reference.Truncate(length);
                    what = $"truncate to {length}";
                }
                else
                {
                    var fork = cache.Fork();
                    var forkReference = reference.Clone();
                    Append(fork, forkReference, format, rng, 3);
                    if (rng.Next(2) == 0) { cache.Dispose(); cache = fork; reference = forkReference; what = "fork, keep child"; }
                    else { fork.Dispose(); what = "fork, keep parent"; }
                }
                ReplayNewBlocks(cache, reference, known);
                AssertLayout(cache, $"step {step} ({what})");
                AssertAttention(cache, reference, rng, $"step {step} ({what})");
                for (int l = 0; l < cache.Layers; l++)
                    for (int g = 0; g < KvHeads; g++)
                    {
                        var (keys, values) = cache.Read(l, g);
                        Assert.True(reference.Head(l, g).SelectMany(t => t.K).SequenceEqual(keys), $"step {step} ({what}): keys of layer {l} head {g}");
                        Assert.True(reference.Head(l, g).SelectMany(t => t.V).SequenceEqual(values), $"step {step} ({what}): values of layer {l} head {g}");
                    }
                Assert.Equal(reference.Heads_.Sum(h => (long)h.Count), cache.StoredTokens);
            }
        }
        finally { cache.Dispose(); }
    }

    /// <summary>
    /// Applies to the reference the codec round trip of every block the cache holds that <paramref name="known"/> does
    /// not (a block's position array is never shared by a re-encoded block), then makes <paramref name="known"/> the
    /// cache's current blocks.
    /// </summary>
    private static void ReplayNewBlocks(PagedKvCache cache, ReferenceKv reference, HashSet<object> known)
    {
        var current = new HashSet<object>(ReferenceEqualityComparer.Instance);
        for (int l = 0; l < cache.Layers; l++)
            for (int g = 0; g < KvHeads; g++)
                foreach (var e in cache.Blocks(l, g))
                {
                    if (!known.Contains(e.Positions) && current.Add(e.Positions))
                        reference.RoundTripSet(l, g, e.Positions, e.KeyLayout, e.ValueLayout);
                    current.Add(e.Positions);
                }
        known.Clear();
        known.UnionWith(current);
    }

    /// <summary>Positions ascend inside each block, at most one partial block per format pair, bytes = ⌈n / 32⌉ blocks per pair + the tail.</summary>
    private static void AssertLayout(PagedKvCache cache, string where)
    {
        long expected = 0;
        for (int l = 0; l < cache.Layers; l++)
            for (int g = 0; g < KvHeads; g++)
            {
                var blocks = cache.Blocks(l, g);
                foreach (var e in blocks)
                    Assert.True(e.Positions.Zip(e.Positions.Skip(1)).All(p => p.First < p.Second), $"{where}: layer {l} head {g}: block positions do not ascend");
                foreach (var pair in blocks.GroupBy(e => (e.KeyLayout.Format, e.ValueLayout.Format)))
                {
                    Assert.True(pair.Count(e => e.Count < 32) <= 1, $"{where}: layer {l} head {g}: several partial {pair.Key} blocks");
                    int tokens = pair.Sum(e => e.Count);
                    if (cache.SharedLayerSource(l) < 0)
                        expected += (tokens + 31) / 32 * (long)(BlockLayout.ForKeys(pair.Key.Item1, HeadDim).ByteSize + BlockLayout.ForValues(pair.Key.Item2, HeadDim).ByteSize);
                }
                if (cache.SharedLayerSource(l) < 0)
                    expected += 2L * (cache.Positions(l, g).Count - blocks.Sum(e => e.Count)) * HeadDim * sizeof(float);
            }
        Assert.Equal(expected, cache.ByteCount);
    }
}
