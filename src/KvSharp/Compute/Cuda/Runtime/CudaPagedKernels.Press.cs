namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>Launchers of the press kernels at the end of paged_cache.cu: attention statistics, score pooling, top-k selection, re-quantization.</summary>
internal sealed partial class CudaPagedKernels
{
    /// <summary>Largest head dimension the statistics kernel decodes into shared memory (STATS_MAX_HD in paged_cache.cu).</summary>
    public const int StatsMaxHeadDim = 256;

    /// <summary>Covered tokens per statistics block, and query heads per score tile (STATS_TK, STATS_TQ).</summary>
    public const int StatsTokenTile = 64, StatsQueryTile = 64;

    /// <summary>
    /// Shared memory of one statistics block for head dimension <paramref name="headDim"/>: the decoded key tile, the
    /// query tile's log-sum-exps and the per-token partial (max, sum), then the query tile or its probabilities.
    /// </summary>
    public static int StatsSharedBytes(int headDim) =>
        4 * (headDim * StatsTokenTile + StatsQueryTile + 8 * StatsTokenTile + Math.Max(headDim * StatsQueryTile, StatsQueryTile * (StatsTokenTile + 1)));

    /// <summary>
    /// Where one layer's statistics launch reads and writes (device addresses). KVzip+ sets <paramref name="ValueNorms"/>
    /// (the layer's ‖W_o^h v_t‖, [heads, <paramref name="ValueNormStride"/>]) and <paramref name="RowNorms"/> (‖x‖ of each row's layer input):
    /// each probability is weighted by their ratio before the fold.
    /// </summary>
    public readonly record struct StatsTarget(ulong Pool, ulong Desc, ulong HeadBlocks, ulong HeadTokens, ulong Covered, ulong Max, ulong Sum,
        int MaxBlocks, int MaxTokens, int BlockTokens, int ValueGroup, ulong ValueNorms = 0, int ValueNormStride = 0, ulong RowNorms = 0);

    private bool _statsShared;

    /// <summary>
    /// Statistics of the counted query rows firstCounted .. rows - 1 of q [rows, heads, hd] over one layer's heads, right
    /// after the attention launch that left each row's per-split (max, sum) in <paramref name="partMl"/> (its plan's
    /// <paramref name="splits"/>): paged_stats_accumulate over tiles of <see cref="StatsTokenTile"/> covered tokens, of
    /// which there are at most <paramref name="maxCovered"/> per head. fold: 0 = max, 1 = mean over the group.
    /// </summary>
    public void Statistics(ulong q, ulong partMl, int splits, in StatsTarget s, int rows, int firstCounted, int fold, int heads, int kvHeads, int headDim,
        int maxCovered)
    {
        if (maxCovered <= 0 || firstCounted >= rows) return;
        var f = _cache["paged_stats_accumulate"];
        int shared = StatsSharedBytes(headDim);
        // One limit per function: the largest head dimension's, so a launch for any head dimension fits (setting it per
        // head dimension would let a smaller one lower it under a larger one's).
        lock (_cache)
            if (!_statsShared)
            {
                f.AllowSharedMemory(StatsSharedBytes(StatsMaxHeadDim));
                _statsShared = true;
            }
        var grid = new Dim3((uint)((maxCovered + StatsTokenTile - 1) / StatsTokenTile), (uint)kvHeads);
        f.Launch(grid, 256, shared, q, s.Pool, s.Desc, s.HeadBlocks, s.HeadTokens, s.Covered, partMl, s.Max, s.Sum,
            Arg.Int(rows), Arg.Int(firstCounted), Arg.Int(fold), Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim),
            Arg.Int(s.BlockTokens), Arg.Int(s.ValueGroup), Arg.Int(s.MaxBlocks), Arg.Int(s.MaxTokens), Arg.Int(splits), Arg.Float(1f / MathF.Sqrt(headDim)),
            s.ValueNorms, Arg.Int(s.ValueNormStride), s.RowNorms);
    }

    /// <summary>Per head: the covered tokens' summed statistics pooled along the stored tokens (SnapKV), +∞ past them, into scores [heads, maxTokens].</summary>
    public void PoolScores(ulong sum, ulong covered, ulong headTokens, ulong scores, int heads, int maxTokens, int kernel, bool maxPool) =>
        _cache["press_pool_scores"].Launch(heads, 256, 0, sum, covered, headTokens, scores, Arg.Int(maxTokens), Arg.Int(kernel), Arg.Int(maxPool ? 1 : 0));

    /// <summary>H2O's scores per head (see press_h2o_scores): the summed statistics, 0 where uncovered, +∞ for the newest <paramref name="window"/> tokens.</summary>
    public void H2oScores(ulong sum, ulong covered, ulong headTokens, ulong scores, int heads, int maxTokens, int window) =>
        _cache["press_h2o_scores"].Launch(heads, 256, 0, sum, covered, headTokens, scores, Arg.Int(maxTokens), Arg.Int(window));

    /// <summary>Per head: runningSums[head, i] += (double)statsSum[head, i] for the covered tokens (press_sums_add: H2O's decode press on the device).</summary>
    public void AddSums(ulong runningSums, ulong statsSum, ulong covered, int heads, int maxTokens) =>
        _cache["press_sums_add"].Launch(heads, 256, 0, runningSums, statsSum, covered, Arg.Int(maxTokens));

    /// <summary>H2O's decode scores per head (press_decode_h2o_scores): (float) the running sum, +∞ from the head's windowStart on.</summary>
    public void DecodeH2oScores(ulong runningSums, ulong headTokens, ulong windowStart, ulong scores, int heads, int maxTokens) =>
        _cache["press_decode_h2o_scores"].Launch(heads, 256, 0, runningSums, headTokens, windowStart, scores, Arg.Int(maxTokens));

    /// <summary>The running sums compacted by an eviction's drop flags, before paged_evict (press_sums_compact).</summary>
    public void CompactSums(ulong runningSums, ulong drop, ulong headTokens, int heads, int maxTokens) =>
        _cache["press_sums_compact"].Launch(heads, 256, 0, runningSums, drop, headTokens, Arg.Int(maxTokens));

    /// <summary>Per head: scores[head, start..end) = statsMax[head, start..end) (KVzip's chunk of one repeat run).</summary>
    public void TakeRange(ulong statsMax, ulong scores, int heads, int maxTokens, int start, int end) =>
        _cache["press_take_range"].Launch(heads, 256, 0, statsMax, scores, Arg.Int(maxTokens), Arg.Int(start), Arg.Int(end));

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

    /// <summary>Shared memory of one key-norm (<paramref name="tiles"/> = 1) or redundancy (2) block: the key tiles, the sums and norms.</summary>
    private static int KeyTileSharedBytes(int headDim, int tiles) => 4 * (tiles * headDim * ValueNormTokens + 9 * ValueNormTokens);

    /// <summary>
    /// ‖k_t‖₂ of one layer's stored tokens (storage order) into output [kvHeads, stride], up to
    /// <paramref name="maxTokens"/> a head (press_key_norms; the tables are the layer's, pre-offset).
    /// </summary>
    public void KeyNorms(ulong pool, ulong desc, ulong headBlocks, ulong headTokens, ulong output, int stride, int maxTokens, int kvHeads,
        int headDim, int blockTokens, int valueGroup, int maxBlocks)
    {
        if (maxTokens <= 0) return;
        _cache["press_key_norms"].Launch(new Dim3((uint)((maxTokens + ValueNormTokens - 1) / ValueNormTokens), (uint)kvHeads), 256,
            KeyTileSharedBytes(headDim, 1), pool, desc, headBlocks, headTokens, output, Arg.Int(stride), Arg.Int(headDim), Arg.Int(blockTokens),
            Arg.Int(valueGroup), Arg.Int(maxBlocks));
    }

    /// <summary>
    /// R-KV's raw redundancy of one layer's stored tokens (storage order; <c>RkvScorer.RawRedundancy</c>) into output
    /// [kvHeads, stride], up to <paramref name="maxTokens"/> a head (press_key_redundancy; the tables are the layer's).
    /// </summary>
    public void KeyRedundancy(ulong pool, ulong desc, ulong headBlocks, ulong headTokens, ulong output, int stride, int maxTokens, int kvHeads,
        int headDim, int blockTokens, int valueGroup, int maxBlocks, double threshold)
    {
        if (maxTokens <= 0) return;
        // 34 KB at the paged cache's largest head dimension (128): within the 48 KB a launch gets without opting in.
        _cache["press_key_redundancy"].Launch(new Dim3((uint)((maxTokens + ValueNormTokens - 1) / ValueNormTokens), (uint)kvHeads), 256, KeyTileSharedBytes(headDim, 2), pool,
            desc, headBlocks, headTokens, output, Arg.Int(stride), Arg.Int(headDim), Arg.Int(blockTokens), Arg.Int(valueGroup), Arg.Int(maxBlocks),
            Arg.Double(threshold));
    }
}
