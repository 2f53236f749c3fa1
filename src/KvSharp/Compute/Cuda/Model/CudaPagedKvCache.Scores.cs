using KvSharp.Cache;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// Press scores computed on the device and read back, for presses whose budget chooses on the host (the CPU's
/// <c>IBudget</c> needs every head's scores: AdaKV, global, pyramid, dynamic, ...): SnapKV's pooled window statistics and
/// H2O's summed observation, the same device kernels as <see cref="SnapKvEvict(int, string, IReadOnlyList{int}, int)"/>
/// and <see cref="H2oEvict(int, IReadOnlyList{int}, int)"/>, without the device's own top-k.
/// </summary>
public sealed partial class CudaPagedKvCache
{
    /// <summary>
    /// SnapKV's scores from the statistics being collected (the window's queries, <see cref="GroupFold.Mean"/>): each head's
    /// summed probabilities pooled along its stored tokens (odd <paramref name="kernel"/>, zero padding, "avg" or "max"),
    /// +∞ for the tokens stored after the collection began (the window), as <c>SnapKvScorer</c> scores on the CPU. Ends the
    /// collection. Returns per head [<see cref="HeadIndex"/>] one score per stored token, in storage order.
    /// </summary>
    /// <exception cref="InvalidOperationException">No collection is in progress.</exception>
    /// <exception cref="KvSharpException">The kernel or pool is out of range.</exception>
    public float[][] SnapKvScores(int kernel, string pool)
    {
        using var scores = SnapKvScoreBuffer(kernel, pool);
        return ReadScores(scores);
    }

    /// <summary>
    /// H2O's scores from its observation (<see cref="BeginHeavyHitters"/> and the prefill chunks): the summed group-mean
    /// probability each token received from the later chunks' queries, +∞ for the newest <paramref name="window"/> tokens,
    /// as <c>H2oScorer</c> scores on the CPU. Ends the observation. Returns per head [<see cref="HeadIndex"/>] one score per
    /// stored token, in storage order.
    /// </summary>
    /// <exception cref="InvalidOperationException">No H2O observation is in progress.</exception>
    /// <exception cref="KvSharpException">The window is negative.</exception>
    public float[][] H2oScores(int window)
    {
        using var scores = H2oScoreBuffer(window);
        return ReadScores(scores);
    }

    /// <summary>
    /// ‖k_t‖₂ of every stored key of a one-sequence cache (as attention reads it: post-RoPE, decoded from its block
    /// format), computed on the device so that only the norms are read back. Returns per head [<see cref="HeadIndex"/>]
    /// one norm per stored token, in storage order.
    /// </summary>
    /// <exception cref="KvSharpException">The cache holds VidKV blocks or several sequences.</exception>
    public float[][] KeyNorms() => PerKey("key norms", (l, output, stride) =>
    {
        var (desc, blocks, tokens) = LayerTables(l);
        _kernels.KeyNorms(_pool.Pointer, desc, blocks, tokens, output, stride, stride, Config.NumKvHeads, Config.HeadDim, BlockTokens, ValueGroup, MaxBlocks);
    });

    /// <summary>
    /// R-KV's raw redundancy of every stored key of a one-sequence cache (<c>RkvScorer.RawRedundancy</c> over each head's
    /// keys in storage order: the sum of the cosine similarities above <paramref name="threshold"/> with the later stored
    /// keys, over n − 1), computed on the device. Returns per head [<see cref="HeadIndex"/>] one value per stored token.
    /// </summary>
    /// <exception cref="KvSharpException">The cache holds VidKV blocks or several sequences.</exception>
    public float[][] KeyRedundancy(double threshold) => PerKey("R-KV's redundancy", (l, output, stride) =>
    {
        var (desc, blocks, tokens) = LayerTables(l);
        _kernels.KeyRedundancy(_pool.Pointer, desc, blocks, tokens, output, stride, stride, Config.NumKvHeads, Config.HeadDim, BlockTokens, ValueGroup,
            MaxBlocks, threshold);
    });

    /// <summary>
    /// One float per stored key of every head, which <paramref name="launch"/> writes for a layer into [kvHeads, stride]
    /// (stride = MaxBlocks · BlockTokens) at the given device address; read back per head in storage order.
    /// </summary>
    private float[][] PerKey(string what, Action<int, ulong, int> launch)
    {
        RefuseVidKv(what);
        if (Batch != 1) throw new KvSharpException($"{what} on the GPU read a cache of one sequence, not {Batch}");
        int stride = MaxBlocks * BlockTokens;
        using var values = Device.Allocate(Math.Max(1L, (long)HeadCount * stride) * sizeof(float));
        for (int l = 0; l < Config.NumLayers; l++) launch(l, values.Pointer + (ulong)((long)HeadIndex(l, 0, 0) * stride * sizeof(float)), stride);
        return DownloadHeads(values, HeadLengths()); // HeadLengths synchronizes: the launches have finished
    }

    /// <summary>SnapKV's pooled scores [HeadCount, MaxBlocks · BlockTokens] on the device; the collection stays open.</summary>
    private DeviceBuffer SnapKvScoreBuffer(int kernel, string pool)
    {
        var (sum, covered) = (_statSum, _covered);
        if (_statistics == null || sum == null || covered == null)
            throw new InvalidOperationException("SnapKV on the device scores from collected statistics: call BeginStatistics and run the window first");
        if (kernel < 1 || kernel % 2 == 0) throw new KvSharpException($"snapkv: kernel must be odd and ≥ 1, got {kernel}");
        if (pool is not ("avg" or "max")) throw new KvSharpException($"snapkv: pool must be avg or max, got {pool}");
        int maxTokens = MaxBlocks * BlockTokens;
        var scores = Device.Allocate((long)HeadCount * maxTokens * sizeof(float));
        _kernels.PoolScores(sum.Pointer, covered.Pointer, _headTokens.Pointer, scores.Pointer, HeadCount, maxTokens, kernel, pool == "max");
        return scores;
    }

    /// <summary>H2O's scores [HeadCount, MaxBlocks · BlockTokens] on the device; the observation stays open.</summary>
    private DeviceBuffer H2oScoreBuffer(int window)
    {
        var (sum, covered) = (_statSum, _covered);
        if (!_coverEachForward || sum == null || covered == null)
            throw new InvalidOperationException("H2O on the device scores from its observation: call BeginHeavyHitters and prefill the chunks first");
        if (window < 0) throw new KvSharpException($"h2o: window must be ≥ 0, got {window}");
        int maxTokens = MaxBlocks * BlockTokens;
        var scores = Device.Allocate((long)HeadCount * maxTokens * sizeof(float));
        _kernels.H2oScores(sum.Pointer, covered.Pointer, _headTokens.Pointer, scores.Pointer, HeadCount, maxTokens, window);
        return scores;
    }

    /// <summary>Each head's scores of its stored tokens from a [HeadCount, MaxBlocks · BlockTokens] buffer; ends the collection.</summary>
    private float[][] ReadScores(DeviceBuffer scores)
    {
        var result = DownloadHeads(scores, HeadLengths());
        StopStatistics();
        return result;
    }
}
