using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using KvSharp.Cache.Blocks;

namespace KvSharp.Cache.Paged;

/// <summary>
/// Attention of one GQA group (the query heads sharing a KV head) at one position over a <see cref="HeadStore"/>:
/// block by block with the fused kernels of <see cref="BlockAttention"/> and an <see cref="OnlineSoftmax"/>, then
/// the float tail as an F32 block. Nothing is decoded to a float copy.
/// </summary>
internal static class PagedAttention
{
    /// <summary>Per-thread scratch, grown on demand (reused across layers and calls).</summary>
    private sealed class Scratch
    {
        public float[] Queries = Array.Empty<float>();
        public float[] Scores = Array.Empty<float>();
        public float[] Output = Array.Empty<float>();
        public OnlineSoftmax? State;
    }

    [ThreadStatic] private static Scratch? t_scratch;

    /// <summary>
    /// Writes the group's [group, headDim] outputs for queries <paramref name="queries"/> (unscaled) at
    /// <paramref name="position"/>: tokens stored at a later position are masked out (chunked prefill).
    /// </summary>
    public static void Attend(HeadStore head, PoolSet pools, ReadOnlySpan<float> queries, int group, int headDim, int position, Span<float> output)
    {
        var s = t_scratch ??= new Scratch();
        int qn = group * headDim;
        if (s.Queries.Length < qn) { s.Queries = new float[qn]; s.Output = new float[qn]; }
        int maxRows = Math.Max(pools.KeyLayout.Tokens, head.TailCount);
        if (s.Scores.Length < group * maxRows) s.Scores = new float[group * maxRows];
        if (s.State is not { } state || state.QueryCount != group || state.HeadDim != headDim)
            s.State = state = new OnlineSoftmax(group, headDim);
        state.Reset();

        var q = s.Queries.AsSpan(0, qn);
        TensorPrimitives.Multiply(queries.Slice(0, qn), 1f / MathF.Sqrt(headDim), q);
        var positions = head.Positions;
        int first = 0;
        foreach (var e in head.Blocks)
        {
            if (positions[first] > position) break; // positions ascend: nothing later is visible
            var scores = s.Scores.AsSpan(0, group * e.Count);
            BlockAttention.Scores(pools.KeyLayout, pools.KeyPool.Span(e.Key), e.Count, q, group, scores);
            Mask(positions, first, e.Count, position, group, scores);
            state.Absorb(scores, e.Count);
            BlockAttention.AccumulateValues(pools.ValueLayout, pools.ValuePool.Span(e.Value), e.Count, scores, group, state.Accumulators);
            first += e.Count;
        }
        int n = head.TailCount;
        if (n > 0 && first == positions.Count - n && positions[first] <= position)
        {
            // The tail is [n, headDim] float32 rows: exactly an F32 block of n tokens.
            var layout = new BlockLayout(KvFormat.F32, QuantAxis.PerToken, 0, n, headDim);
            var scores = s.Scores.AsSpan(0, group * n);
            BlockAttention.Scores(layout, MemoryMarshal.AsBytes(head.TailKeys), n, q, group, scores);
            Mask(positions, first, n, position, group, scores);
            state.Absorb(scores, n);
            BlockAttention.AccumulateValues(layout, MemoryMarshal.AsBytes(head.TailValues), n, scores, group, state.Accumulators);
        }
        state.Finish(s.Output);
        s.Output.AsSpan(0, qn).CopyTo(output);
    }

    /// <summary>Sets to −∞ the scores of tokens first..first+count-1 stored at a position after <paramref name="position"/>.</summary>
    private static void Mask(IReadOnlyList<int> positions, int first, int count, int position, int group, Span<float> scores)
    {
        if (positions[first + count - 1] <= position) return;
        for (int t = 0; t < count; t++)
        {
            if (positions[first + t] <= position) continue;
            for (int i = 0; i < group; i++) scores[i * count + t] = float.NegativeInfinity;
        }
    }
}
