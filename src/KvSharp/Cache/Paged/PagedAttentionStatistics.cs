using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using KvSharp.Cache.Blocks;

namespace KvSharp.Cache.Paged;

/// <summary>The running statistics of one (layer, KV head): per covered token the max and the sum of folded probability.</summary>
internal sealed class HeadStatistics
{
    public HeadStatistics(int[] positions, int headDim)
    {
        Positions = positions;
        Max = new float[positions.Length];
        Sum = new float[positions.Length];
        QueryMax = new float[headDim];
    }

    /// <summary>Per channel: the largest |q_c| of the counted queries of the group's heads (unscaled).</summary>
    public float[] QueryMax { get; }

    /// <summary>Positions of the covered tokens: the head's first <c>Positions.Length</c> stored tokens, in storage order (max and sum follow it).</summary>
    public int[] Positions { get; }
    public float[] Max { get; }
    public float[] Sum { get; }
}

/// <summary>
/// The second pass of attention when statistics are collected: over a head's covered tokens (the first ones it
/// stores, since nothing is removed while collecting), the scores are recomputed with the same kernels and the same
/// scaled query matrix as <see cref="PagedAttention"/> and turned into probabilities exp(s − lse) with the log-sum-exp
/// the attention pass reported for each query row; the group's rows are folded and added to the
/// <see cref="HeadStatistics"/>. Blocks are walked exactly as <see cref="PagedAttention"/> walks them.
/// </summary>
internal static class PagedAttentionStatistics
{
    private sealed class Scratch
    {
        public float[] Queries = Array.Empty<float>();
        public float[] BalancedQueries = Array.Empty<float>();
        public float[] Scores = Array.Empty<float>();
        public float[] Folded = Array.Empty<float>();
    }

    [ThreadStatic] private static Scratch? t_scratch;

    /// <summary>
    /// Adds the probabilities of the <paramref name="count"/> positions <paramref name="firstPosition"/>.. (queries laid
    /// out as for <see cref="PagedAttention.Attend(HeadStore, ReadOnlySpan{float}, int, int, int, int, int, Span{float}, int, Span{float}, int)"/>;
    /// position j's row i has log-sum-exp <paramref name="logSumExp"/>[j·<paramref name="logSumExpStride"/> + i]) to
    /// <paramref name="stats"/>. Positions before <paramref name="firstCounted"/> are left out.
    /// </summary>
    /// <remarks>Call with the same runs of positions as the attention pass: its query matrix, hence its scores, are then identical.</remarks>
    public static void Accumulate(HeadStore head, ReadOnlySpan<float> queries, int queryStride, int count,
        int group, int headDim, int firstPosition, ReadOnlySpan<float> logSumExp, int logSumExpStride,
        int firstCounted, GroupFold fold, HeadStatistics stats)
    {
        int covered = stats.Positions.Length;
        int lastPosition = firstPosition + count - 1;
        if (covered == 0 || lastPosition < firstCounted) return;
        var s = t_scratch ??= new Scratch();
        int rows = count * group, gn = group * headDim, qn = rows * headDim;
        if (s.Queries.Length < qn) s.Queries = new float[qn];
        int maxTokens = Math.Max(head.BlockTokens, head.TailCount);
        if (s.Scores.Length < rows * maxTokens) s.Scores = new float[rows * maxTokens];
        if (s.Folded.Length < maxTokens) s.Folded = new float[maxTokens];

        // The same scaling as the attention pass, so the scores come out bit-identical.
        float scale = 1f / MathF.Sqrt(headDim);
        for (int j = 0; j < count; j++)
            TensorPrimitives.Multiply(queries.Slice(j * queryStride, gn), scale, s.Queries.AsSpan(j * gn, gn));
        PagedAttention.BalanceQueries(head, s.Queries, rows, headDim, ref s.BalancedQueries);
        var run = new Run(count, group, headDim, firstPosition, firstCounted, fold, logSumExp, logSumExpStride);
        // Covered tokens are the first `covered` in storage order (appends and flushes only add after them); blocks are
        // not in position order, so a block starting after the queries does not end the walk.
        int first = 0;
        foreach (var e in head.Blocks)
        {
            if (first >= covered) return;
            if (e.FirstPosition <= lastPosition)
                Block(e.KeyLayout, e.KeyBytes, e.Positions, first, Math.Min(e.Count, covered - first), run,
                    e.Formats.BalancedKeys ? s.BalancedQueries : s.Queries, s, stats);
            first += e.Count;
        }
        int n = head.TailCount;
        if (first < covered && n > 0 && head.TailPositions[0] <= lastPosition)
        {
            var layout = new BlockLayout(KvFormat.F32, QuantAxis.PerToken, 0, n, headDim);
            Block(layout, MemoryMarshal.AsBytes(head.TailKeys), head.TailPositions, first, Math.Min(n, covered - first), run, s.Queries, s, stats);
        }
    }

    /// <summary>What stays fixed across the blocks of one call.</summary>
    private readonly ref struct Run(int count, int group, int headDim, int firstPosition, int firstCounted, GroupFold fold,
        ReadOnlySpan<float> logSumExp, int logSumExpStride)
    {
        public readonly int Count = count, Group = group, HeadDim = headDim, FirstPosition = firstPosition, FirstCounted = firstCounted;
        public readonly GroupFold Fold = fold;
        public readonly ReadOnlySpan<float> LogSumExp = logSumExp;
        public readonly int LogSumExpStride = logSumExpStride;
    }

    /// <summary>
    /// Scores the tokens of one block (at ascending <paramref name="positions"/>, storage indices first..) for the rows
    /// that can see the block's first token (as the attention pass does), then adds the folded probabilities of its
    /// first <paramref name="coveredCount"/> tokens for every counted position.
    /// </summary>
    private static void Block(BlockLayout keyLayout, ReadOnlySpan<byte> keys, ReadOnlySpan<int> positions, int first,
        int coveredCount, in Run run, float[] queries, Scratch s, HeadStatistics stats)
    {
        int group = run.Group, rows = run.Count * group, n = positions.Length;
        int j0 = Math.Max(0, positions[0] - run.FirstPosition), r0 = j0 * group, visible = rows - r0;
        var scores = s.Scores.AsSpan(0, visible * n);
        BlockAttention.Scores(keyLayout, keys, n, queries.AsSpan(r0 * run.HeadDim, visible * run.HeadDim), visible, scores);
        var folded = s.Folded.AsSpan(0, coveredCount);
        var max = stats.Max.AsSpan(first, coveredCount);
        var sum = stats.Sum.AsSpan(first, coveredCount);
        for (int j = Math.Max(j0, run.FirstCounted - run.FirstPosition); j < run.Count; j++)
        {
            int position = run.FirstPosition + j;
            // Tokens after the query's position are masked (chunked prefill): they get probability 0.
            int seen = coveredCount;
            while (seen > 0 && positions[seen - 1] > position) seen--;
            for (int i = 0; i < group; i++)
            {
                var p = scores.Slice((j * group + i - r0) * n, seen);
                float lse = run.LogSumExp[j * run.LogSumExpStride + i];
                if (float.IsNegativeInfinity(lse)) p.Clear(); // the row saw no token at all
                else
                {
                    TensorPrimitives.Subtract(p, lse, p);
                    TensorPrimitives.Exp(p, p);
                }
                if (i == 0) p.CopyTo(folded);
                else if (run.Fold == GroupFold.Max) TensorPrimitives.Max(folded[..seen], p, folded);
                else TensorPrimitives.Add(folded[..seen], p, folded);
            }
            var f = folded[..seen];
            if (run.Fold == GroupFold.Mean && group > 1) TensorPrimitives.Multiply(f, 1f / group, f);
            TensorPrimitives.Max(max[..seen], f, max);
            TensorPrimitives.Add(sum[..seen], f, sum);
        }
    }

    /// <summary>L2 norms of the first <paramref name="covered"/> stored keys of <paramref name="head"/> in storage order, decoded from its blocks and tail.</summary>
    public static float[] KeyNorms(HeadStore head, int headDim, int covered)
    {
        var norms = new float[covered];
        var keys = new float[Math.Max(head.BlockTokens, 1) * headDim];
        int first = 0;
        foreach (var e in head.Blocks)
        {
            if (first >= covered) return norms;
            head.DecodeKeys(e, keys);
            for (int t = 0; t < e.Count && first + t < covered; t++)
                norms[first + t] = TensorPrimitives.Norm(keys.AsSpan(t * headDim, headDim));
            first += e.Count;
        }
        var tail = head.TailKeys;
        for (int t = 0; first + t < covered; t++)
            norms[first + t] = TensorPrimitives.Norm(tail.Slice(t * headDim, headDim));
        return norms;
    }
}
