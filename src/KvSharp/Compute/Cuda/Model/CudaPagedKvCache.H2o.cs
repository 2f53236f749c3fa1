using KvSharp.Cache;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// H2O (heavy hitters) on the device, as the CPU press <c>ScoredPress(H2oScorer, budget)</c> scores a prefill: the attention
/// each token receives from every later query, summed over the prefill's queries and averaged over the GQA group, the
/// newest tokens kept. The CPU press re-runs the prefill in chunks, each chunk's queries observed over the tokens before
/// it; the device gets the same observations by prefilling in those chunks with the statistics covering, for each chunk,
/// the tokens stored before it (one running sum per token, so no host round trip between chunks).
/// </summary>
/// <example>
/// <code>
/// gpu.Forward(prompt[..chunk], cache);                 // the first chunk is not observed (nothing before it)
/// cache.BeginHeavyHitters();
/// for (int s = chunk; s &lt; prompt.Length; s += chunk) gpu.Forward(prompt[s..Math.Min(s + chunk, prompt.Length)], cache);
/// bool[][] dropped = cache.H2oEvict(window: 32, keepPerHead, protectedPrefix);
/// </code>
/// </example>
public sealed partial class CudaPagedKvCache
{
    private bool _coverEachForward;

    /// <summary>
    /// Starts H2O's observation: every following <see cref="CudaTransformer.Forward"/> call (one prefill chunk) adds, for each
    /// of its query rows, the probability the row gives every token stored before the call, folded over the group's heads by
    /// the mean (H2O's GQA average), to a running sum per token. Prefill the first chunk before calling this.
    /// </summary>
    /// <exception cref="InvalidOperationException">Statistics are already being collected.</exception>
    /// <exception cref="KvSharpException">The cache holds VidKV blocks, or the head dimension is above the statistics kernels'.</exception>
    public void BeginHeavyHitters()
    {
        BeginStatistics(new AttentionStatisticsRequest(0, GroupFold.Mean));
        _coverEachForward = true;
    }

    /// <summary>
    /// Ends H2O's observation and evicts on the device: each head keeps its <paramref name="keep"/>[head] tokens of largest
    /// summed attention among those after <paramref name="protectedPrefix"/> (ties to the later token, as <c>TopK.KeepMask</c>),
    /// plus the newest <paramref name="window"/> tokens and the protected prefix. Tokens of the last chunk outside the window
    /// score 0 (no observed query came after them in an earlier chunk), as on the CPU. The cache must be the fresh prefill
    /// (stored index = position). Returns the drop flags per head in storage order.
    /// </summary>
    /// <exception cref="InvalidOperationException">No H2O observation is in progress.</exception>
    /// <exception cref="KvSharpException">A parameter is out of range.</exception>
    public bool[][] H2oEvict(int window, IReadOnlyList<int> keep, int protectedPrefix = 0)
    {
        ArgumentNullException.ThrowIfNull(keep);
        if (keep.Count != HeadCount) throw new KvSharpException($"h2o: {keep.Count} keep counts for {HeadCount} heads");
        if (protectedPrefix < 0) throw new KvSharpException($"h2o: protected prefix {protectedPrefix} is negative");
        using var scores = H2oScoreBuffer(window);
        return SelectAndEvict(scores, keep, protectedPrefix);
    }

    /// <summary>
    /// <see cref="H2oEvict(int, IReadOnlyList{int}, int)"/> of one sequence of the batch, whose chunks were prefilled
    /// (<c>Forward(chunk, cache, sequence)</c>) during the observation: <paramref name="keep"/>[layer · kvHeads + head] counts its
    /// heads' kept tokens, the other sequences keep every token. Returns the drop flags of the sequence's heads.
    /// </summary>
    /// <exception cref="InvalidOperationException">No H2O observation is in progress.</exception>
    /// <exception cref="KvSharpException">The sequence or a parameter is out of range.</exception>
    public bool[][] H2oEvict(int sequence, int window, IReadOnlyList<int> keep, int protectedPrefix = 0) =>
        EvictOneSequence("h2o", sequence, keep, all => H2oEvict(window, all, protectedPrefix));

    /// <summary>
    /// During H2O's observation, before a forward pass's first append: the covered tokens become every head's stored tokens,
    /// so this chunk's queries are scored over the tokens before it (what the CPU's re-run over the truncated cache sees).
    /// </summary>
    private void CoverStoredTokens(in LayerAttention a)
    {
        if (_coverEachForward && a.Layer == 0 && _covered is { } covered) covered.CopyFromAsync(_headTokens, HeadCount * sizeof(int));
    }
}
