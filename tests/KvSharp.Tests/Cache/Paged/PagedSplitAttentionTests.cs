using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using static KvSharp.Tests.Cache.Paged.PagedTestData;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>Flash-decoding split: segments of a head's blocks attended apart and merged equal one pass, and float64 attention.</summary>
public class PagedSplitAttentionTests
{
    private const int HeadDim = 64, Group = 4;

    /// <summary>
    /// A head of 1000 tokens (31 blocks + an 8-token tail): for 1, 2, 3 and 7 segments (some empty of visible blocks
    /// for the earlier query), merging the segments' softmax states gives the one-pass outputs and log-sum-exps up to
    /// rounding, and both equal float64 attention over the decoded blocks.
    /// </summary>
    [Theory]
    [InlineData(KvFormat.F32)]
    [InlineData(KvFormat.Int4)]
    [InlineData(KvFormat.Int2)]
    public void MergedSegments_EqualOnePass(KvFormat format)
    {
        const int tokens = 1000;
        var rng = new Random((int)format + 40);
        var pools = new PoolSet(new PagedKvCacheOptions { KeyFormat = format, ValueFormat = format }, HeadDim);
        var head = new HeadStore(pools, HeadDim);
        var reference = new ReferenceKv(1, Group, 1, HeadDim);
        var k = Gaussians(rng, tokens * HeadDim); var v = Gaussians(rng, tokens * HeadDim);
        for (int t = 0; t < tokens; t++) head.Append(t, k.AsSpan(t * HeadDim, HeadDim), v.AsSpan(t * HeadDim, HeadDim));
        head.Flush(32);
        reference.Append(0, k, v, tokens);
        reference.RoundTripBlocks(pools.Default.KeyLayout, pools.Default.ValueLayout, head.Blocks.Count);
        Assert.Equal(31, head.Blocks.Count);

        // Two positions: the last one, and one that sees only the first third (later segments are masked for it).
        foreach (int position in new[] { tokens - 1, 300 })
        {
            var q = Gaussians(rng, Group * HeadDim, 2);
            var expected = reference.Attend(0, q, 1, position);
            var onePass = new float[Group * HeadDim];
            var lse = new float[Group];
            PagedAttention.Attend(head, q, Group * HeadDim, 1, Group, HeadDim, position, onePass, Group * HeadDim, lse, Group);
            AssertClose(expected, onePass, 1e-4, $"{format}, one pass, position {position}");
            foreach (int segments in new[] { 1, 2, 3, 7 })
            {
                var max = new float[segments * Group]; var sum = new float[max.Length]; var acc = new float[max.Length * HeadDim];
                int blocks = head.Blocks.Count;
                for (int s = 0; s < segments; s++)
                    PagedAttention.AttendSegment(head, q, Group * HeadDim, 1, Group, HeadDim, position,
                        blocks * s / segments, blocks * (s + 1) / segments, s == segments - 1,
                        max.AsSpan(s * Group, Group), sum.AsSpan(s * Group, Group), acc.AsSpan(s * Group * HeadDim, Group * HeadDim));
                var merged = new float[Group * HeadDim];
                var mergedLse = new float[Group];
                PagedAttention.Merge(segments, 1, Group, HeadDim, max, sum, acc, merged, Group * HeadDim, mergedLse, Group);
                AssertClose(onePass, merged, 1e-6, $"{format}, {segments} segments, position {position}");
                AssertClose(lse, mergedLse, 1e-6, $"{format}, {segments} segments, position {position}, log-sum-exp");
            }
        }
        head.Clear();
        pools.RemoveOwner();
    }

    /// <summary>
    /// One KV head over 4096 tokens through the cache (split into segments whenever the machine has ≥ 2 threads):
    /// decode equals float64 attention over the decoded blocks, and the statistics of that decode (mean fold, every
    /// token covered) sum to one per query and match the float64 probabilities.
    /// </summary>
    [Fact]
    public void LongDecode_EqualsFloat64_WithStatistics()
    {
        const int tokens = 4096;
        var rng = new Random(77);
        using var cache = new PagedKvCache(1, Group, 1, HeadDim, new PagedKvCacheOptions { KeyFormat = KvFormat.Int8, ValueFormat = KvFormat.Int4, MaxTokens = tokens });
        var reference = new ReferenceKv(1, Group, 1, HeadDim);
        var k = Gaussians(rng, tokens * HeadDim); var v = Gaussians(rng, tokens * HeadDim);
        cache.Append(0, k, v, tokens);
        reference.Append(0, k, v, tokens);
        reference.RoundTripBlocks(BlockLayout.ForKeys(KvFormat.Int8, HeadDim), BlockLayout.ForValues(KvFormat.Int4, HeadDim), tokens / 32);
        var q = Gaussians(rng, Group * HeadDim, 3);
        var o = new float[Group * HeadDim];
        cache.BeginStatistics(new AttentionStatisticsRequest(0, GroupFold.Mean));
        cache.Attend(0, q, 1, tokens - 1, o);
        var stats = cache.EndStatistics();
        AssertClose(reference.Attend(0, q, 1, tokens - 1), o, 1e-4, "decode over 4096 tokens");

        var expected = new double[tokens];
        double scale = 1 / Math.Sqrt(HeadDim);
        var keys = reference.Head(0, 0);
        for (int h = 0; h < Group; h++)
        {
            var s = keys.Select(x => { double d = 0; for (int c = 0; c < HeadDim; c++) d += (double)q[h * HeadDim + c] * x.K[c]; return d * scale; }).ToArray();
            double m = s.Max(), z = s.Sum(x => Math.Exp(x - m));
            for (int t = 0; t < tokens; t++) expected[t] += Math.Exp(s[t] - m) / z / Group;
        }
        Assert.Equal(1, stats.QueryCount(0));
        AssertClose(expected, stats.SumProbability(0, 0), 1e-5, "probabilities");
        double total = 0;
        foreach (var p in stats.SumProbability(0, 0)) total += p;
        Assert.Equal(1, total, 4);
    }
}
