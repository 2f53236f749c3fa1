using System.Numerics.Tensors;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// Running softmax state for a set of queries attending block by block (flash-decoding): per query a running
/// max, a running sum of exp(score − max), and an accumulator [HeadDim] rescaled whenever the max grows.
/// One instance serves one KV head's query group; reuse it (<see cref="Reset"/>) across heads and layers.
/// </summary>
/// <example>
/// <code>
/// state.Reset();
/// foreach (var (k, v) in blocks)
/// {
///     BlockAttention.Scores(k.Layout, k.Bytes, n, queries, g, scores);      // [g, n]
///     state.Absorb(scores, n);                                              // scores become weights
///     BlockAttention.AccumulateValues(v.Layout, v.Bytes, n, scores, g, state.Accumulators);
/// }
/// state.Finish(output);                                                     // [g, HeadDim]
/// </code>
/// </example>
public sealed class OnlineSoftmax
{
    private readonly float[] _max, _sum, _acc;

    /// <summary>Creates the state for <paramref name="queryCount"/> queries of <paramref name="headDim"/> channels.</summary>
    public OnlineSoftmax(int queryCount, int headDim)
    {
        if (queryCount < 1 || headDim < 1) throw new ArgumentOutOfRangeException(nameof(queryCount), $"need at least one query and one channel, got {queryCount}x{headDim}");
        QueryCount = queryCount; HeadDim = headDim;
        _max = new float[queryCount];
        _sum = new float[queryCount];
        _acc = new float[queryCount * headDim];
        Reset();
    }

    /// <summary>Queries tracked.</summary>
    public int QueryCount { get; }

    /// <summary>Channels per accumulator row.</summary>
    public int HeadDim { get; }

    /// <summary>The unnormalized outputs Σ exp(s − max)·v, [QueryCount, HeadDim]; pass to <see cref="BlockAttention.AccumulateValues(BlockLayout, ReadOnlySpan{byte}, int, ReadOnlySpan{float}, int, Span{float})"/>.</summary>
    public Span<float> Accumulators => _acc;

    /// <summary>The running maximum score of query <paramref name="query"/> (−∞ before any token).</summary>
    public float Max(int query) => _max[query];

    /// <summary>The running Σ exp(score − Max) of query <paramref name="query"/>.</summary>
    public float Sum(int query) => _sum[query];

    /// <summary>log Σ exp(score) over every absorbed token of <paramref name="query"/> (for attention-statistics scorers).</summary>
    public float LogSumExp(int query) => _max[query] + MathF.Log(_sum[query]);

    /// <summary>Forgets every absorbed token.</summary>
    public void Reset()
    {
        Array.Fill(_max, float.NegativeInfinity);
        Array.Clear(_sum);
        Array.Clear(_acc);
    }

    /// <summary>
    /// Takes a block's scores [QueryCount, tokenCount] (row stride tokenCount; −∞ masks a token), raises the
    /// running max where needed (rescaling sums and accumulators), and overwrites the scores in place with the
    /// weights exp(score − max) to feed to AccumulateValues.
    /// </summary>
    public void Absorb(Span<float> scores, int tokenCount) => Absorb(scores, tokenCount, 0);

    /// <summary>
    /// <see cref="Absorb(Span{float}, int)"/> for the queries <paramref name="firstQuery"/>..QueryCount-1 only:
    /// <paramref name="scores"/> is [QueryCount − firstQuery, tokenCount] (the other queries see nothing of this block).
    /// </summary>
    internal void Absorb(Span<float> scores, int tokenCount, int firstQuery)
    {
        if ((uint)firstQuery >= (uint)QueryCount) throw new ArgumentOutOfRangeException(nameof(firstQuery), $"query {firstQuery} of {QueryCount}");
        if (scores.Length < (QueryCount - firstQuery) * tokenCount)
            throw new ArgumentException($"scores hold {scores.Length} floats but {QueryCount - firstQuery} rows of {tokenCount} are needed", nameof(scores));
        if (tokenCount == 0) return;
        for (int i = firstQuery; i < QueryCount; i++)
        {
            var row = scores.Slice((i - firstQuery) * tokenCount, tokenCount);
            float max = MathF.Max(_max[i], TensorPrimitives.Max(row));
            if (float.IsNegativeInfinity(max)) { row.Clear(); continue; } // everything masked so far
            if (max > _max[i])
            {
                float correction = MathF.Exp(_max[i] - max); // 0 on the first block (max was −∞)
                _sum[i] *= correction;
                TensorPrimitives.Multiply(_acc.AsSpan(i * HeadDim, HeadDim), correction, _acc.AsSpan(i * HeadDim, HeadDim));
                _max[i] = max;
            }
            TensorPrimitives.Subtract(row, max, row);
            TensorPrimitives.Exp(row, row);
            _sum[i] += TensorPrimitives.Sum(row);
        }
    }

    /// <summary>Writes the normalized attention outputs acc / sum, [QueryCount, HeadDim] (zeros for a query that saw no token).</summary>
    public void Finish(Span<float> output)
    {
        if (output.Length < _acc.Length) throw new ArgumentException($"output holds {output.Length} floats but {_acc.Length} are needed", nameof(output));
        for (int i = 0; i < QueryCount; i++)
        {
            float inv = _sum[i] > 0 ? 1f / _sum[i] : 0f;
            TensorPrimitives.Multiply(_acc.AsSpan(i * HeadDim, HeadDim), inv, output.Slice(i * HeadDim, HeadDim));
        }
    }
}
