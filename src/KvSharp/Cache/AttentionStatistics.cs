namespace KvSharp.Cache;

/// <summary>How the attention probabilities of the query heads sharing one KV head (a GQA group) become one number per key.</summary>
public enum GroupFold
{
    /// <summary>The largest probability any head of the group gives the key.</summary>
    Max,

    /// <summary>The mean probability over the heads of the group.</summary>
    Mean,
}

/// <summary>
/// Asks a cache to collect attention statistics: every query at position ≥ <paramref name="FirstQueryPosition"/>
/// attended while collection is on contributes its softmax probabilities over the tokens stored when collection began.
/// </summary>
/// <param name="FirstQueryPosition">Queries at earlier positions are attended normally but not counted.</param>
/// <param name="Fold">How the probabilities of a GQA group's query heads are folded into one per key.</param>
public sealed record AttentionStatisticsRequest(int FirstQueryPosition, GroupFold Fold = GroupFold.Max);

/// <summary>
/// Per (layer, KV head) and per covered token (a token stored when collection began): the max and the sum over the
/// counted queries of the group-folded softmax probability, and the L2 norm of the stored key. What eviction
/// scorers (SnapKV, H2O, TOVA, KVzip…) rank tokens by.
/// </summary>
/// <remarks>
/// Probabilities are normalized over everything a query sees (covered tokens and tokens appended during collection,
/// causally masked), so a covered token's probabilities are exactly the weights attention gave it. Tokens appended
/// during collection are not covered.
/// </remarks>
public sealed class AttentionStatistics
{
    private readonly int[][] _positions;
    private readonly float[][] _max, _sum, _norms, _queryMax;
    private readonly int[] _queryCount;

    internal AttentionStatistics(int layers, int kvHeads, int[][] positions, float[][] max, float[][] sum, float[][] norms, int[] queryCount, float[][] queryMax)
    {
        Layers = layers; KvHeads = kvHeads;
        _positions = positions; _max = max; _sum = sum; _norms = norms; _queryCount = queryCount; _queryMax = queryMax;
    }

    /// <summary>Layers covered.</summary>
    public int Layers { get; }

    /// <summary>KV heads per layer.</summary>
    public int KvHeads { get; }

    /// <summary>Original positions of the covered tokens of (layer, KV head), ascending; the other spans follow this order.</summary>
    public IReadOnlyList<int> Positions(int layer, int kvHead) => _positions[Index(layer, kvHead)];

    /// <summary>Per covered token: the max over the counted queries of the group-folded probability (0 when no query saw it).</summary>
    public ReadOnlySpan<float> MaxProbability(int layer, int kvHead) => _max[Index(layer, kvHead)];

    /// <summary>Per covered token: the sum over the counted queries of the group-folded probability.</summary>
    public ReadOnlySpan<float> SumProbability(int layer, int kvHead) => _sum[Index(layer, kvHead)];

    /// <summary>Per covered token: the L2 norm of its key as stored (dequantized) when collection ended.</summary>
    public ReadOnlySpan<float> KeyNorms(int layer, int kvHead) => _norms[Index(layer, kvHead)];

    /// <summary>
    /// Per channel of (layer, KV head): the largest |q_c| over the counted queries of the heads of its GQA group, as
    /// attention received them (after RoPE, before the 1/√d scaling); 0 when no query was counted. MiKV's balancer.
    /// </summary>
    public ReadOnlySpan<float> QueryAbsMax(int layer, int kvHead) => _queryMax[Index(layer, kvHead)];

    /// <summary>Query positions counted in <paramref name="layer"/>.</summary>
    public int QueryCount(int layer)
    {
        if ((uint)layer >= (uint)Layers) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {Layers}");
        return _queryCount[layer];
    }

    private int Index(int layer, int kvHead)
    {
        if ((uint)layer >= (uint)Layers) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {Layers}");
        if ((uint)kvHead >= (uint)KvHeads) throw new ArgumentOutOfRangeException(nameof(kvHead), $"KV head {kvHead} of {KvHeads}");
        return layer * KvHeads + kvHead;
    }
}
