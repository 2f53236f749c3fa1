using System.Buffers;

namespace KvSharp.Cache.Blocks;

/// <summary>One stored block as attention sees it: its layout, its bytes, and how many of its token rows are filled.</summary>
/// <param name="Layout">Format and shape of the bytes.</param>
/// <param name="Bytes">At least <see cref="BlockLayout.ByteSize"/> bytes.</param>
/// <param name="TokenCount">Filled token rows (≤ Layout.Tokens).</param>
public readonly record struct KvBlock(BlockLayout Layout, ReadOnlyMemory<byte> Bytes, int TokenCount);

/// <summary>Decode attention of a query group over a list of key/value blocks of any (mixed) formats.</summary>
public static class BlockDecodeAttention
{
    /// <summary>
    /// output[i] = softmax_t(queries[i] · k_t) · v over every token of <paramref name="keys"/>/<paramref name="values"/>
    /// (block j of each list holds the same tokens). <paramref name="queries"/> is [queryCount, HeadDim], pre-scaled by 1/√d;
    /// <paramref name="output"/> is [queryCount, HeadDim]. No causal mask: every listed token is visible to every query.
    /// <paramref name="state"/> must be sized (queryCount, HeadDim); it is reset first and holds the softmax statistics afterwards.
    /// </summary>
    public static void Attend(IReadOnlyList<KvBlock> keys, IReadOnlyList<KvBlock> values, ReadOnlySpan<float> queries, int queryCount, OnlineSoftmax state, Span<float> output)
    {
        if (keys.Count != values.Count) throw new ArgumentException($"{keys.Count} key blocks but {values.Count} value blocks");
        if (state.QueryCount != queryCount) throw new ArgumentException($"softmax state is sized for {state.QueryCount} queries, not {queryCount}", nameof(state));
        int maxTokens = 0;
        for (int j = 0; j < keys.Count; j++)
        {
            if (keys[j].TokenCount != values[j].TokenCount)
                throw new ArgumentException($"block {j}: {keys[j].TokenCount} keys but {values[j].TokenCount} values");
            if (keys[j].Layout.HeadDim != state.HeadDim || values[j].Layout.HeadDim != state.HeadDim)
                throw new ArgumentException($"block {j}: head dimension differs from the softmax state's {state.HeadDim}");
            maxTokens = Math.Max(maxTokens, keys[j].TokenCount);
        }
        int need = queryCount * maxTokens;
        float[]? rented = null;
        Span<float> scores = need <= 1024 ? stackalloc float[1024] : (rented = ArrayPool<float>.Shared.Rent(need));
        state.Reset();
        for (int j = 0; j < keys.Count; j++)
        {
            int n = keys[j].TokenCount;
            if (n == 0) continue;
            var s = scores[..(queryCount * n)];
            BlockAttention.Scores(keys[j].Layout, keys[j].Bytes.Span, n, queries, queryCount, s);
            state.Absorb(s, n);
            BlockAttention.AccumulateValues(values[j].Layout, values[j].Bytes.Span, n, s, queryCount, state.Accumulators);
        }
        state.Finish(output);
        if (rented != null) ArrayPool<float>.Shared.Return(rented);
    }
}
