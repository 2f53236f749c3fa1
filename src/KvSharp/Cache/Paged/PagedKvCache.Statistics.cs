namespace KvSharp.Cache.Paged;

/// <summary>Attention statistics collection of <see cref="PagedKvCache"/> (what eviction scorers rank tokens by).</summary>
public sealed partial class PagedKvCache
{
    /// <summary>The collection in progress, or null.</summary>
    private sealed class StatisticsCollection(AttentionStatisticsRequest request, HeadStatistics[] heads, int layers)
    {
        public AttentionStatisticsRequest Request { get; } = request;
        public HeadStatistics[] Heads { get; } = heads; // [layer * kvHeads + head]
        public int[] QueryCount { get; } = new int[layers];
    }

    private StatisticsCollection? _statistics;

    /// <summary>Whether <see cref="Attend"/> currently accumulates attention statistics.</summary>
    public bool IsCollectingStatistics => _statistics != null;

    /// <summary>
    /// Starts collecting: from now on every <see cref="Attend"/> adds, for its queries at position ≥
    /// <see cref="AttentionStatisticsRequest.FirstQueryPosition"/>, the softmax probability each gives the tokens
    /// every (layer, KV head) stores now (the covered tokens). Attention outputs are unchanged.
    /// Evict, Truncate, Requantize and ShareLayer are refused until <see cref="EndStatistics"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">Statistics are already being collected.</exception>
    public void BeginStatistics(AttentionStatisticsRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_statistics != null) throw new InvalidOperationException("attention statistics are already being collected: call EndStatistics first");
        if (request.FirstQueryPosition < 0)
            throw new ArgumentOutOfRangeException(nameof(request), $"FirstQueryPosition must be ≥ 0, got {request.FirstQueryPosition}");
        if (!Enum.IsDefined(request.Fold)) throw new ArgumentOutOfRangeException(nameof(request), $"unknown group fold {request.Fold}");
        // A layer sharing another's KV (ShareLayer) covers the tokens of the store it reads.
        var heads = Enumerable.Range(0, _stores.Length)
            .Select(i => new HeadStatistics(_stores[StoreLayer(i / _kvHeads) * _kvHeads + i % _kvHeads].StoragePositions(), _headDim)).ToArray();
        _statistics = new StatisticsCollection(request, heads, _layers);
    }

    /// <summary>Stops collecting and returns the statistics; key norms are those of the keys as stored now.</summary>
    /// <exception cref="InvalidOperationException">No collection is in progress.</exception>
    public AttentionStatistics EndStatistics()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var c = _statistics ?? throw new InvalidOperationException("no attention statistics are being collected: call BeginStatistics first");
        _statistics = null;
        var positions = new int[_stores.Length][];
        var max = new float[_stores.Length][];
        var sum = new float[_stores.Length][];
        var norms = new float[_stores.Length][];
        for (int i = 0; i < _stores.Length; i++)
        {
            var h = c.Heads[i];
            norms[i] = PagedAttentionStatistics.KeyNorms(_stores[StoreLayer(i / _kvHeads) * _kvHeads + i % _kvHeads], _headDim, h.Positions.Length);
            // Collected in storage order; reported in ascending position order, like the cache's Positions.
            var order = Enumerable.Range(0, h.Positions.Length).ToArray();
            positions[i] = (int[])h.Positions.Clone();
            Array.Sort(positions[i], order);
            max[i] = order.Select(j => h.Max[j]).ToArray();
            sum[i] = order.Select(j => h.Sum[j]).ToArray();
            norms[i] = order.Select(j => norms[i][j]).ToArray();
        }
        return new AttentionStatistics(_layers, _kvHeads, positions, max, sum, norms, c.QueryCount, c.Heads.Select(h => h.QueryMax).ToArray());
    }

    /// <summary>Refuses an operation that would remove or re-encode covered tokens while statistics are collected.</summary>
    private void ThrowIfCollectingStatistics(string operation)
    {
        if (_statistics != null)
            throw new InvalidOperationException($"cannot {operation} while attention statistics are being collected: call EndStatistics first");
    }

    /// <summary>A buffer for the attention pass's per-row log-sum-exp [count, heads] when this call has counted queries, else null.</summary>
    private float[]? StatisticsRows(int count, int firstPosition)
        => _statistics is { } c && firstPosition + count > c.Request.FirstQueryPosition ? new float[count * _heads] : null;

    /// <summary>
    /// The statistics pass after the attention pass of one Attend call: one job per KV head (jobs of one head share its
    /// accumulators), each going over the call's positions in the attention pass's runs of <see cref="PositionsPerJob"/>.
    /// </summary>
    private void AccumulateStatistics(int layer, float[] queries, int count, int firstPosition, float[] logSumExp)
    {
        var c = _statistics!;
        int group = _heads / _kvHeads, hd = _headDim, qRow = _heads * hd;
        int firstCounted = c.Request.FirstQueryPosition;
        c.QueryCount[layer] += firstPosition + count - Math.Max(firstPosition, firstCounted);
        for (int t = Math.Max(0, firstCounted - firstPosition); t < count; t++)
            for (int h = 0; h < _heads; h++)
            {
                var qmax = c.Heads[layer * _kvHeads + h / group].QueryMax;
                var q = new ReadOnlySpan<float>(queries, t * qRow + h * hd, hd);
                for (int d = 0; d < hd; d++) qmax[d] = Math.Max(qmax[d], Math.Abs(q[d]));
            }
        int firstRun = Math.Max(0, firstCounted - firstPosition) / PositionsPerJob * PositionsPerJob;
        long work = (long)(count - firstRun) * _heads * hd * (firstPosition + count);
        Compute.Cpu.CpuThreads.For(_kvHeads, work < (1 << 18) ? int.MaxValue : 1, (start, end) =>
        {
            for (int g = start; g < end; g++)
                for (int t = firstRun; t < count; t += PositionsPerJob)
                {
                    int offset = t * qRow + g * group * hd, m = Math.Min(PositionsPerJob, count - t);
                    int lse = t * _heads + g * group;
                    PagedAttentionStatistics.Accumulate(_stores[StoreLayer(layer) * _kvHeads + g],
                        new ReadOnlySpan<float>(queries, offset, (m - 1) * qRow + group * hd), qRow, m, group, hd, firstPosition + t,
                        new ReadOnlySpan<float>(logSumExp, lse, (m - 1) * _heads + group), _heads,
                        firstCounted, c.Request.Fold, c.Heads[layer * _kvHeads + g]);
                }
        });
    }
}
