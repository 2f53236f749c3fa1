using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using KvSharp.Cache.Blocks;

namespace KvSharp.Cache.Paged;

/// <summary>
/// Attention of one GQA group (the query heads sharing a KV head) at one or several consecutive positions over a
/// <see cref="HeadStore"/>: block by block with the fused kernels of <see cref="BlockAttention"/> and an
/// <see cref="OnlineSoftmax"/>, then the float tail as an F32 block. Nothing is decoded to a float copy.
/// </summary>
/// <remarks>
/// Several positions (chunked prefill) are served by one pass over the blocks: every query row of every position
/// is one row of the kernels' query matrix, so a block's per-block work (parameter widening, kernel dispatch,
/// softmax bookkeeping) is paid once for all of them. A block is only shown to the rows whose position is at or
/// after its first (smallest) position (rows are ordered by position, so that is a suffix of the rows); later tokens
/// inside a block are masked per row. Each row's arithmetic is the same as attending that position alone. Blocks are
/// walked in storage order, which is not position order (re-quantization regroups tokens by format): the softmax is
/// order-invariant, so each block only needs its own positions for the mask.
/// </remarks>
internal static class PagedAttention
{
    /// <summary>Per-thread scratch, grown on demand (reused across layers and calls).</summary>
    private sealed class Scratch
    {
        public float[] Queries = Array.Empty<float>();
        public float[] BalancedQueries = Array.Empty<float>(); // queries / b, for blocks with balanced keys
        public float[] Scores = Array.Empty<float>();
        public float[] Output = Array.Empty<float>();
        public OnlineSoftmax? State;
    }

    [ThreadStatic] private static Scratch? t_scratch;

    /// <summary>
    /// Writes the group's [group, headDim] outputs for queries <paramref name="queries"/> (unscaled) at
    /// <paramref name="position"/>: tokens stored at a later position are masked out (chunked prefill).
    /// </summary>
    public static void Attend(HeadStore head, ReadOnlySpan<float> queries, int group, int headDim, int position, Span<float> output)
        => Attend(head, queries, 0, 1, group, headDim, position, output, 0);

    /// <summary>
    /// Writes, for the <paramref name="count"/> positions <paramref name="firstPosition"/>.., the group's
    /// [group, headDim] outputs: position j's queries (unscaled) start at queries[j·<paramref name="queryStride"/>]
    /// and its outputs at output[j·<paramref name="outputStride"/>]. Tokens stored at a later position than a
    /// query's are masked out for it. When <paramref name="logSumExp"/> is not empty, position j's row i gets its
    /// log Σ exp(score) at logSumExp[j·<paramref name="logSumExpStride"/> + i] (for <see cref="PagedAttentionStatistics"/>).
    /// </summary>
    public static void Attend(HeadStore head, ReadOnlySpan<float> queries, int queryStride, int count,
        int group, int headDim, int firstPosition, Span<float> output, int outputStride,
        Span<float> logSumExp = default, int logSumExpStride = 0)
    {
        var (s, state) = Start(head, queries, queryStride, count, group, headDim);
        Absorb(head, 0, int.MaxValue, true, firstPosition, count, group, headDim, s, state);
        int gn = group * headDim;
        state.Finish(s.Output);
        for (int j = 0; j < count; j++)
            s.Output.AsSpan(j * gn, gn).CopyTo(output.Slice(j * outputStride, gn));
        if (!logSumExp.IsEmpty)
            for (int j = 0; j < count; j++)
                for (int i = 0; i < group; i++) logSumExp[j * logSumExpStride + i] = state.LogSumExp(j * group + i);
    }

    /// <summary>
    /// One segment of a split attention (flash decoding): as <see cref="Attend(HeadStore, ReadOnlySpan{float}, int, int, int, int, int, Span{float}, int, Span{float}, int)"/>
    /// over blocks <paramref name="fromBlock"/>..<paramref name="toBlock"/>-1 only (and the float tail when
    /// <paramref name="tail"/>), leaving the unnormalized softmax state of every row r = j·group + i: its running
    /// max and sum at <paramref name="max"/>[r] / <paramref name="sum"/>[r] and its accumulator at
    /// <paramref name="accumulators"/>[r·headDim..]. <see cref="Merge"/> combines the segments.
    /// </summary>
    public static void AttendSegment(HeadStore head, ReadOnlySpan<float> queries, int queryStride, int count,
        int group, int headDim, int firstPosition, int fromBlock, int toBlock, bool tail,
        Span<float> max, Span<float> sum, Span<float> accumulators)
    {
        var (s, state) = Start(head, queries, queryStride, count, group, headDim);
        Absorb(head, fromBlock, toBlock, tail, firstPosition, count, group, headDim, s, state);
        for (int r = 0; r < state.QueryCount; r++) { max[r] = state.Max(r); sum[r] = state.Sum(r); }
        state.Accumulators.CopyTo(accumulators);
    }

    /// <summary>
    /// Combines <paramref name="segments"/> softmax states of <see cref="AttendSegment"/> (segment k's rows at
    /// max[k·rows..], sum[k·rows..], accumulators[k·rows·headDim..]) into the outputs and log-sum-exps
    /// <see cref="Attend(HeadStore, ReadOnlySpan{float}, int, int, int, int, int, Span{float}, int, Span{float}, int)"/> writes:
    /// each segment's sum and accumulator are rescaled by exp(its max − the overall max) and added.
    /// </summary>
    public static void Merge(int segments, int count, int group, int headDim, ReadOnlySpan<float> max, ReadOnlySpan<float> sum,
        ReadOnlySpan<float> accumulators, Span<float> output, int outputStride, Span<float> logSumExp = default, int logSumExpStride = 0)
    {
        int rows = count * group;
        Span<float> row = stackalloc float[headDim];
        for (int r = 0; r < rows; r++)
        {
            float m = float.NegativeInfinity;
            for (int k = 0; k < segments; k++) m = MathF.Max(m, max[k * rows + r]);
            var o = output.Slice(r / group * outputStride + r % group * headDim, headDim);
            row.Clear();
            float total = 0;
            if (!float.IsNegativeInfinity(m))
                for (int k = 0; k < segments; k++)
                {
                    float mk = max[k * rows + r];
                    if (float.IsNegativeInfinity(mk)) continue; // the segment saw nothing of this row
                    float w = MathF.Exp(mk - m);
                    total += w * sum[k * rows + r];
                    TensorPrimitives.MultiplyAdd(accumulators.Slice((k * rows + r) * headDim, headDim), w, row, row);
                }
            TensorPrimitives.Multiply(row, total > 0 ? 1f / total : 0f, o);
            if (!logSumExp.IsEmpty) logSumExp[r / group * logSumExpStride + r % group] = m + MathF.Log(total);
        }
    }

    /// <summary>Sizes the thread's scratch and softmax state for count·group rows, resets the state, scales the queries.</summary>
    private static (Scratch, OnlineSoftmax) Start(HeadStore head, ReadOnlySpan<float> queries, int queryStride, int count, int group, int headDim)
    {
        var s = t_scratch ??= new Scratch();
        int rows = count * group, gn = group * headDim, qn = rows * headDim;
        if (s.Queries.Length < qn) { s.Queries = new float[qn]; s.Output = new float[qn]; }
        int maxRows = Math.Max(head.BlockTokens, head.TailCount);
        if (s.Scores.Length < rows * maxRows) s.Scores = new float[rows * maxRows];
        if (s.State is not { } state || state.QueryCount != rows || state.HeadDim != headDim)
            s.State = state = new OnlineSoftmax(rows, headDim);
        state.Reset();

        float scale = 1f / MathF.Sqrt(headDim);
        for (int j = 0; j < count; j++)
            TensorPrimitives.Multiply(queries.Slice(j * queryStride, gn), scale, s.Queries.AsSpan(j * gn, gn));
        BalanceQueries(head, s.Queries, rows, headDim, ref s.BalancedQueries);
        return (s, state);
    }

    /// <summary>
    /// When the head has a key balance b, writes the scaled query rows divided by b (exact: b holds powers of two) to
    /// <paramref name="balanced"/>, for the blocks whose keys are stored balanced: (q/b)·(b⊙k) = q·k.
    /// </summary>
    internal static void BalanceQueries(HeadStore head, float[] queries, int rows, int headDim, ref float[] balanced)
    {
        if (head.KeyBalance is not { } b) return;
        if (balanced.Length < rows * headDim) balanced = new float[rows * headDim];
        for (int r = 0; r < rows; r++)
            TensorPrimitives.Divide(queries.AsSpan(r * headDim, headDim), b, balanced.AsSpan(r * headDim, headDim));
    }

    /// <summary>Absorbs blocks fromBlock..toBlock-1 (and the float tail when <paramref name="tail"/>) into the state.</summary>
    private static void Absorb(HeadStore head, int fromBlock, int toBlock, bool tail, int firstPosition, int count,
        int group, int headDim, Scratch s, OnlineSoftmax state)
    {
        int lastPosition = firstPosition + count - 1;
        var blocks = head.Blocks;
        for (int index = fromBlock; index < Math.Min(toBlock, blocks.Count); index++)
        {
            var e = blocks[index];
            if (e.FirstPosition > lastPosition) continue; // blocks are not in position order: a later one may be visible
            Block(e.KeyLayout, e.KeyBytes, e.ValueLayout, e.ValueBytes, // each block in its own formats (a head may mix them)
                e.Positions, firstPosition, group, headDim, e.Formats.BalancedKeys ? s.BalancedQueries : s.Queries, state, s);
        }
        int n = head.TailCount;
        if (tail && n > 0 && head.TailPositions[0] <= lastPosition)
        {
            // The tail is [n, headDim] float32 rows: exactly an F32 block of n tokens.
            var layout = new BlockLayout(KvFormat.F32, QuantAxis.PerToken, 0, n, headDim);
            Block(layout, MemoryMarshal.AsBytes(head.TailKeys), layout, MemoryMarshal.AsBytes(head.TailValues),
                head.TailPositions, firstPosition, group, headDim, s.Queries, state, s);
        }
    }

    /// <summary>Absorbs one block (tokens at ascending <paramref name="positions"/>) into the rows that can see at least its first token.</summary>
    private static void Block(BlockLayout keyLayout, ReadOnlySpan<byte> keys, BlockLayout valueLayout, ReadOnlySpan<byte> values,
        ReadOnlySpan<int> positions, int firstPosition, int group, int headDim, float[] queries, OnlineSoftmax state, Scratch s)
    {
        int n = positions.Length, r0 = Math.Max(0, positions[0] - firstPosition) * group, rows = state.QueryCount - r0;
        var scores = s.Scores.AsSpan(0, rows * n);
        BlockAttention.Scores(keyLayout, keys, n, queries.AsSpan(r0 * headDim, rows * headDim), rows, scores);
        Mask(positions, firstPosition + r0 / group, group, scores, rows);
        state.Absorb(scores, n, r0);
        BlockAttention.AccumulateValues(valueLayout, values, n, scores, rows, state.Accumulators.Slice(r0 * headDim, rows * headDim));
    }

    /// <summary>
    /// Sets to −∞ the scores [rows, positions.Length] of the block's tokens stored at a position after their row's
    /// (row r is at position <paramref name="rowPosition"/> + r / group; positions ascend).
    /// </summary>
    private static void Mask(ReadOnlySpan<int> positions, int rowPosition, int group, Span<float> scores, int rows)
    {
        int count = positions.Length, last = positions[count - 1];
        for (int r = 0; r < rows; r += group, rowPosition++)
        {
            if (last <= rowPosition) return; // later rows see even more
            for (int t = 0; t < count; t++)
            {
                if (positions[t] <= rowPosition) continue;
                for (int i = r; i < r + group; i++) scores[i * count + t] = float.NegativeInfinity;
            }
        }
    }
}
