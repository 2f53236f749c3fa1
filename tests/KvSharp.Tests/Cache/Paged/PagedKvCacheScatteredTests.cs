using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>
/// Scattered re-quantization (MiKV-style tiers over importance-ranked tokens): blocks regroup same-format tokens out of
/// position order, so bytes follow the per-format token counts; attention, statistics, rollback and forks over such
/// blocks against float64 references written here.
/// </summary>
public class PagedKvCacheScatteredTests
{
    private const int HeadDim = 64, KvHeads = 2, Group = 2, Heads = KvHeads * Group, Row = KvHeads * HeadDim, QRow = Heads * HeadDim;

    private static long Pair(KvFormat keys, KvFormat values) =>
        BlockLayout.ForKeys(keys, HeadDim).ByteSize + BlockLayout.ForValues(values, HeadDim).ByteSize;

    private static (PagedKvCache Cache, ReferenceKv Reference) Build(Random rng, int tokens)
    {
        var cache = new PagedKvCache(1, Heads, KvHeads, HeadDim, new PagedKvCacheOptions { MaxTokens = 2000 });
        var reference = new ReferenceKv(1, Heads, KvHeads, HeadDim);
        Append(cache, reference, rng, tokens);
        return (cache, reference);
    }

    private static void Append(PagedKvCache cache, ReferenceKv reference, Random rng, int n)
    {
        var k = Representable(Gaussians(rng, n * Row), KvFormat.F16, HeadDim);
        var v = Representable(Gaussians(rng, n * Row), KvFormat.F16, HeadDim);
        cache.Append(0, k, v, n); reference.Append(0, k, v, n);
    }

    private static void AssertAttention(PagedKvCache cache, ReferenceKv reference, Random rng, string where)
    {
        for (int g = 0; g < KvHeads; g++) Assert.Equal(reference.Head(0, g).Select(t => t.Pos), cache.Positions(0, g));
        foreach (int n in new[] { 1, 40 })
        {
            int first = cache.Length - n;
            var q = Gaussians(rng, n * QRow, 2);
            var actual = new float[n * QRow];
            cache.Attend(0, q, n, first, actual);
            AssertClose(reference.Attend(0, q, n, first), actual, 1e-4, $"{where}, queries {first}+{n}");
        }
    }

    /// <summary>
    /// 600 F16 tokens per head (18 blocks + a 24-token tail); a random 20% of each head's tokens (blocks and tail) →
    /// Int8, then the other 80% → Int2, as MiKV's tiers do. Each format's tokens are packed into ⌈n/32⌉ dense blocks in
    /// ascending position order, so the head costs exactly ⌈n₈/32⌉ Int8 pairs + ⌈n₂/32⌉ Int2 pairs (no F16, no tail):
    /// within one partial block per format of 0.2·Int8 + 0.8·Int2 per token. (Before the regrouping, every scattered
    /// Int8 token split its F16 run and the head grew past its F16 size.) Attention equals float64 attention over each
    /// packed block's codec round trip. Then a question is appended and rolled back, twice (tail only, then past a
    /// flush): bytes and attention return to the compressed state. A fork evicts without touching its parent.
    /// </summary>
    [Fact]
    public void TwoTierScatteredRequantize_PacksToFormulaBytes_AndSurvivesRollbackAndFork()
    {
        const int tokens = 600;
        var rng = new Random(2024);
        var (cache, reference) = Build(rng, tokens);
        using var _ = cache;
        long f16Bytes = cache.ByteCount;
        for (int g = 0; g < KvHeads; g++)
        {
            var high = Enumerable.Range(0, tokens).Select(_ => rng.NextDouble() < 0.2).ToArray();
            cache.Requantize(0, g, high, KvFormat.Int8, KvFormat.Int8);
            cache.Requantize(0, g, high.Select(h => !h).ToArray(), KvFormat.Int2, KvFormat.Int2);
            var highPositions = Enumerable.Range(0, tokens).Where(p => high[p]).ToArray();
            var lowPositions = Enumerable.Range(0, tokens).Where(p => !high[p]).ToArray();
            foreach (var (positions, format) in new[] { (highPositions, KvFormat.Int8), (lowPositions, KvFormat.Int2) })
            {
                for (int s = 0; s < positions.Length; s += 32)
                    reference.RoundTripSet(0, g, positions[s..Math.Min(s + 32, positions.Length)],
                        BlockLayout.ForKeys(format, HeadDim), BlockLayout.ForValues(format, HeadDim));
            }
            long expected = (highPositions.Length + 31) / 32 * Pair(KvFormat.Int8, KvFormat.Int8)
                + (lowPositions.Length + 31) / 32 * Pair(KvFormat.Int2, KvFormat.Int2);
            Assert.Equal(expected, cache.BytesByLayerHead(0, g));
            double ideal = (highPositions.Length * Pair(KvFormat.Int8, KvFormat.Int8) + lowPositions.Length * Pair(KvFormat.Int2, KvFormat.Int2)) / 32.0;
            Assert.True(cache.BytesByLayerHead(0, g) < ideal + Pair(KvFormat.Int8, KvFormat.Int8) + Pair(KvFormat.Int2, KvFormat.Int2));
            Assert.Equal(new HashSet<KvFormat> { KvFormat.Int2, KvFormat.Int8 }, cache.BytesByFormat(0, g).Keys.ToHashSet());
        }
        Assert.True(cache.ByteCount < f16Bytes / 3, $"{cache.ByteCount} bytes after MiKV-style tiers, {f16Bytes} as F16");
        AssertAttention(cache, reference, rng, "two tiers");
        long compressed = cache.ByteCount;

        // A question appended after compression and rolled back (the sessions' pattern), once within the tail, once past a flush.
        foreach (int question in new[] { 30, 70 })
        {
            Append(cache, reference, rng, question);
            AssertAttention(cache, reference, rng, $"{question}-token question appended");
            cache.Truncate(tokens); reference.Truncate(tokens);
            Assert.Equal(compressed, cache.ByteCount);
            AssertAttention(cache, reference, rng, $"{question}-token question rolled back");
        }

        using var fork = cache.Fork();
        var forkReference = reference.Clone();
        long blocks = cache.PoolLiveBlocks;
        var evict = fork.Positions(0, 1).Where(_ => rng.Next(5) == 0).ToHashSet();
        fork.Evict(0, 1, evict); forkReference.Evict(0, 1, evict);
        // The fork's affected blocks are re-encoded from their decoded values: replay that on its reference.
        var shared = cache.Blocks(0, 1).Select(e => e.Positions).ToHashSet(ReferenceEqualityComparer.Instance);
        foreach (var e in fork.Blocks(0, 1).Where(e => !shared.Contains(e.Positions)))
            forkReference.RoundTripSet(0, 1, e.Positions, e.KeyLayout, e.ValueLayout);
        Assert.True(cache.PoolLiveBlocks > blocks, "the fork's eviction allocated its own blocks");
        AssertAttention(fork, forkReference, rng, "fork after eviction");
        AssertAttention(cache, reference, rng, "parent after the fork's eviction");
    }

    /// <summary>
    /// Statistics over blocks out of position order: an F16 cache whose heads had every third (head 0) or fourth
    /// (head 1) token moved to lossless F32 blocks, so blocks interleave positions. A 40-token prefill chunk and three
    /// decode steps are counted; per position, the max / sum of the group-max softmax probability and the key norm
    /// equal a float64 softmax over the stored tokens, reported in ascending position order.
    /// </summary>
    [Fact]
    public void Statistics_OverBlocksOutOfPositionOrder_MapToTheirPositions()
    {
        var rng = new Random(31);
        var (cache, reference) = Build(rng, 150);
        using var _ = cache;
        cache.Requantize(0, 0, Enumerable.Range(0, 150).Select(p => p % 3 == 0).ToArray(), KvFormat.F32, KvFormat.F32);
        cache.Requantize(0, 1, Enumerable.Range(0, 150).Select(p => p % 4 == 1).ToArray(), KvFormat.F32, KvFormat.F32);
        var firsts = cache.Blocks(0, 0).Select(e => e.FirstPosition).ToArray();
        Assert.NotEqual(firsts.Order(), firsts);

        var covered = Enumerable.Range(0, KvHeads).Select(g => reference.Head(0, g).ToList()).ToArray();
        var max = covered.Select(c => new double[c.Count]).ToArray();
        var sum = covered.Select(c => new double[c.Count]).ToArray();
        cache.BeginStatistics(new AttentionStatisticsRequest(150, GroupFold.Max));
        void Attend(int first, int n)
        {
            var q = Gaussians(rng, n * QRow, 2);
            var o = new float[n * QRow];
            cache.Attend(0, q, n, first, o);
            for (int j = 0; j < n; j++)
                for (int g = 0; g < KvHeads; g++)
                {
                    var visible = reference.Head(0, g).Where(t => t.Pos <= first + j).ToList();
                    var folded = new double[covered[g].Count];
                    for (int i = 0; i < Group; i++)
                    {
                        int h = g * Group + i;
                        var s = visible.Select(t => Enumerable.Range(0, HeadDim).Sum(c => (double)q[j * QRow + h * HeadDim + c] * t.K[c]) / Math.Sqrt(HeadDim)).ToArray();
                        double m = s.Max(), z = s.Sum(x => Math.Exp(x - m));
                        for (int t = 0; t < visible.Count; t++)
                        {
                            int index = covered[g].FindIndex(c => c.Pos == visible[t].Pos);
                            if (index >= 0) folded[index] = Math.Max(folded[index], Math.Exp(s[t] - m) / z);
                        }
                    }
                    for (int t = 0; t < folded.Length; t++) { max[g][t] = Math.Max(max[g][t], folded[t]); sum[g][t] += folded[t]; }
                }
        }
        Append(cache, reference, rng, 40);
        Attend(150, 40);
        for (int step = 0; step < 3; step++)
        {
            Append(cache, reference, rng, 1);
            Attend(cache.Length - 1, 1);
        }
        var stats = cache.EndStatistics();
        for (int g = 0; g < KvHeads; g++)
        {
            Assert.Equal(covered[g].Select(t => t.Pos), stats.Positions(0, g));
            AssertClose(max[g], stats.MaxProbability(0, g), 2e-5, $"head {g}, max");
            AssertClose(sum[g], stats.SumProbability(0, g), 1e-4, $"head {g}, sum");
            AssertClose(covered[g].Select(t => Math.Sqrt(t.K.Sum(x => (double)x * x))).ToArray(), stats.KeyNorms(0, g), 1e-5, $"head {g}, key norms");
        }
    }
    /// <summary>
    /// Balanced per-token keys (MiKV): head 0 gets a balance of random factors in [1/16, 16] (stored rounded to powers of
    /// two), every third token → Int2 keys per token over all channels after the balance, Int4 values. Each such block's
    /// keys equal the codec round trip of b⊙k (b = the test's own power-of-two rounding) divided by b, and attention equals
    /// float64 attention over those keys (queries meet them as q/b inside the cache). Save/load and a fork keep the
    /// balance and attend bit-identically; evicting some of the balanced tokens re-encodes them losslessly. Misuse is refused.
    /// </summary>
    [Fact]
    public void BalancedPerTokenKeys_AttendAsTheirBalancedRoundTrip()
    {
        var rng = new Random(77);
        var (cache, reference) = Build(rng, 150);
        using var _ = cache;
        Assert.Throws<InvalidOperationException>(() => cache.Requantize(0, 0, new bool[150], KvFormat.Int2, KvFormat.Int4, balancedKeys: true));
        var factors = Enumerable.Range(0, HeadDim).Select(_ => (float)Math.Pow(2, rng.NextDouble() * 8 - 4)).ToArray();
        cache.SetKeyBalance(0, 0, factors);
        var b = factors.Select(f => Math.Pow(2, Math.Round(Math.Log2(f)))).ToArray();
        Assert.Equal(b.Select(x => (float)x), cache.KeyBalance(0, 0)!);
        Assert.Null(cache.KeyBalance(0, 1));
        var select = Enumerable.Range(0, 150).Select(p => p % 3 == 0).ToArray();
        cache.Requantize(0, 0, select, KvFormat.Int2, KvFormat.Int4, balancedKeys: true);

        var keyLayout = new BlockLayout(KvFormat.Int2, QuantAxis.PerToken, HeadDim, 32, HeadDim);
        var valueLayout = BlockLayout.ForValues(KvFormat.Int4, HeadDim);
        var positions = Enumerable.Range(0, 150).Where(p => select[p]).ToArray();
        var head = reference.Head(0, 0);
        for (int s0 = 0; s0 < positions.Length; s0 += 32)
        {
            var chunk = positions[s0..Math.Min(s0 + 32, positions.Length)];
            var k = chunk.SelectMany(p => head[p].K.Select((x, c) => (float)(x * b[c]))).ToArray();
            var v = chunk.SelectMany(p => head[p].V).ToArray();
            var kb = new byte[keyLayout.ByteSize]; var vb = new byte[valueLayout.ByteSize];
            BlockCodec.Encode(keyLayout, k, chunk.Length, kb); BlockCodec.Decode(keyLayout, kb, chunk.Length, k);
            BlockCodec.Encode(valueLayout, v, chunk.Length, vb); BlockCodec.Decode(valueLayout, vb, chunk.Length, v);
            for (int t = 0; t < chunk.Length; t++)
                head[chunk[t]] = head[chunk[t]] with
                {
                    K = Enumerable.Range(0, HeadDim).Select(c => (float)(k[t * HeadDim + c] / b[c])).ToArray(),
                    V = v.AsSpan(t * HeadDim, HeadDim).ToArray(),
                };
        }
        Assert.Equal(2 * (keyLayout.ByteSize + valueLayout.ByteSize), cache.BytesByFormat(0, 0).Where(f => f.Key is KvFormat.Int2 or KvFormat.Int4).Sum(f => f.Value));
        var read = cache.Read(0, 0);
        Assert.Equal(head.SelectMany(t => t.K), read.Keys);
        AssertAttention(cache, reference, rng, "balanced keys");
        Assert.Throws<InvalidOperationException>(() => cache.SetKeyBalance(0, 0, factors));
        Assert.Throws<KvSharpException>(() => cache.Requantize(0, 1, new bool[150], KvFormat.F16, KvFormat.F16, balancedKeys: true));

        using var dir = new TempDir();
        cache.Save(dir.File("balanced.kvc"), "m");
        using var loaded = PagedKvCache.Load(dir.File("balanced.kvc"), "m");
        using var fork = cache.Fork();
        Assert.Equal(cache.KeyBalance(0, 0), loaded.KeyBalance(0, 0));
        var q = Gaussians(rng, 40 * QRow, 2);
        var expected = new float[q.Length];
        cache.Attend(0, q, 40, cache.Length - 40, expected);
        foreach (var other in new[] { loaded, fork })
        {
            var actual = new float[q.Length];
            other.Attend(0, q, 40, cache.Length - 40, actual);
            Assert.Equal(expected, actual);
        }

        // Eviction re-encodes the kept balanced tokens from their decoded values: the same keys come back.
        var evict = positions.Where((_, i) => i % 4 == 1).ToHashSet();
        cache.Evict(0, 0, evict); reference.Evict(0, 0, evict);
        Assert.Equal(reference.Head(0, 0).SelectMany(t => t.K), cache.Read(0, 0).Keys);
        AssertAttention(cache, reference, rng, "balanced keys after eviction");
    }
}
