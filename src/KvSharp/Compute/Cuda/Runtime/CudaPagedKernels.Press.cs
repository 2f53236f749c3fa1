namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>Launchers of the press kernels at the end of paged_cache.cu: attention statistics, score pooling, top-k selection, re-quantization.</summary>
internal sealed partial class CudaPagedKernels
{
    /// <summary>Most query rows × group heads one statistics launch takes (STATS_MAX_ROWS in paged_cache.cu).</summary>
    public const int StatsMaxRows = 256;

    /// <summary>Largest head dimension the statistics kernels decode into shared memory (STATS_MAX_HD).</summary>
    public const int StatsMaxHeadDim = 256;

    /// <summary>Where one layer's statistics launch reads and writes (device addresses).</summary>
    public readonly record struct StatsTarget(ulong Pool, ulong Desc, ulong HeadBlocks, ulong HeadTokens, ulong Covered, ulong Part, ulong Max, ulong Sum,
        int MaxBlocks, int MaxTokens, int BlockTokens, int ValueGroup);

    /// <summary>
    /// Statistics of query rows row0 .. row0 + rows - 1 of q [rowsTotal, heads, hd] over one layer's heads (paged_stats_lse then
    /// paged_stats_accumulate, both over <paramref name="splits"/> splits of each head's tokens). fold: 0 = max, 1 = mean over the group.
    /// </summary>
    public void Statistics(ulong q, in StatsTarget s, int rows, int row0, int rowsTotal, int firstCounted, int fold, int heads, int kvHeads, int headDim, int splits)
    {
        var grid = new Dim3((uint)splits, (uint)kvHeads);
        float scale = 1f / MathF.Sqrt(headDim);
        _cache["paged_stats_lse"].Launch(grid, 128, 0, q, s.Pool, s.Desc, s.HeadBlocks, s.HeadTokens, s.Part, Arg.Int(rows), Arg.Int(row0),
            Arg.Int(rowsTotal), Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim), Arg.Int(s.BlockTokens), Arg.Int(s.ValueGroup), Arg.Int(s.MaxBlocks),
            Arg.Float(scale));
        _cache["paged_stats_accumulate"].Launch(grid, 128, 0, q, s.Pool, s.Desc, s.HeadBlocks, s.HeadTokens, s.Covered, s.Part, s.Max, s.Sum,
            Arg.Int(rows), Arg.Int(row0), Arg.Int(rowsTotal), Arg.Int(firstCounted), Arg.Int(fold), Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim),
            Arg.Int(s.BlockTokens), Arg.Int(s.ValueGroup), Arg.Int(s.MaxBlocks), Arg.Int(s.MaxTokens), Arg.Float(scale));
    }

    /// <summary>Per head: the covered tokens' summed statistics pooled along the stored tokens (SnapKV), +∞ past them, into scores [heads, maxTokens].</summary>
    public void PoolScores(ulong sum, ulong covered, ulong headTokens, ulong scores, int heads, int maxTokens, int kernel, bool maxPool) =>
        _cache["press_pool_scores"].Launch(heads, 256, 0, sum, covered, headTokens, scores, Arg.Int(maxTokens), Arg.Int(kernel), Arg.Int(maxPool ? 1 : 0));

    /// <summary>H2O's scores per head (see press_h2o_scores): the summed statistics, 0 where uncovered, +∞ for the newest <paramref name="window"/> tokens.</summary>
    public void H2oScores(ulong sum, ulong covered, ulong headTokens, ulong scores, int heads, int maxTokens, int window) =>
        _cache["press_h2o_scores"].Launch(heads, 256, 0, sum, covered, headTokens, scores, Arg.Int(maxTokens), Arg.Int(window));

    /// <summary>Per head: drop flags [heads, maxTokens] keeping the keep[head] best candidates from protect[head] on, every +∞ and the protected tokens.</summary>
    public void Select(ulong scores, ulong headTokens, ulong keep, ulong protect, ulong drop, int heads, int maxTokens) =>
        _cache["press_select"].Launch(heads, 256, 0, scores, headTokens, keep, protect, drop, Arg.Int(maxTokens));

    /// <summary>Re-quantization of <paramref name="heads"/> heads by selection flags [heads, maxTokens] into <paramref name="newPool"/> (see paged_requantize).</summary>
    public void Requantize(ulong oldPool, ulong newPool, ulong oldDesc, ulong desc, ulong headBlocks, ulong select, ulong classes, ulong staging,
        ulong top, ulong error, long poolUnits, int heads, int maxBlocks, int maxTokens, int blockTokens, int headDim, int valueGroup, int keyFormat,
        int valueFormat) =>
        _cache["paged_requantize"].Launch(heads, Threads, 0, oldPool, newPool, oldDesc, desc, headBlocks, select, classes, staging, top, error,
            (ulong)poolUnits, Arg.Int(maxBlocks), Arg.Int(maxTokens), Arg.Int(blockTokens), Arg.Int(headDim), Arg.Int(valueGroup), Arg.Int(keyFormat),
            Arg.Int(valueFormat));
}
