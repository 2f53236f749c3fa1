using KvSharp.Cache;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// KVzip+ on the device for <see cref="CudaPagedKvCache"/>: the value norms ‖W_o^h v_t‖ of the stored tokens from the
/// device's output projection (per head its Gram matrix G_h = W_o^hᵀ W_o^h, as <c>KvzipPlusValueNorms</c> computes on
/// the CPU), and a max-fold statistics collection whose probabilities are weighted by ‖W_o^h v_t‖ / ‖x_q‖ (x_q the
/// row's layer input), as <c>KvzipPlusRun</c> weighs them.
/// </summary>
public sealed partial class CudaPagedKvCache
{
    private DeviceBuffer? _valueNorms, _rowNorms;
    private int _valueNormStride;

    /// <summary>
    /// ‖W_o^h v_t‖ of the first <paramref name="count"/> stored tokens of every (layer, KV head) at batch 1 (storage order),
    /// for every query head h of the head's group: [HeadCount, group, count] (row k of head i: query head
    /// (i mod kvHeads) · group + k of its layer). <paramref name="model"/>'s output projections give the Gram matrices.
    /// The caller owns the buffer.
    /// </summary>
    /// <exception cref="KvSharpException">The cache holds VidKV blocks, several sequences, or fewer than <paramref name="count"/> tokens in a head.</exception>
    internal DeviceBuffer KvzipPlusValueNorms(CudaTransformer model, int count)
    {
        ArgumentNullException.ThrowIfNull(model);
        RefuseVidKv("KVzip+'s value norms");
        if (Batch != 1) throw new KvSharpException($"KVzip+ on the GPU presses a cache of one sequence, not {Batch}");
        if (HeadLengths().Min() < count) throw new KvSharpException($"KVzip+: a head stores fewer than the context's {count} tokens");
        var c = Config;
        int group = c.NumHeads / c.NumKvHeads, hd = c.HeadDim;
        var norms = Device.Allocate(Math.Max(1L, (long)HeadCount * group * count) * sizeof(float));
        using var grams = Device.Allocate((long)c.NumHeads * hd * hd * sizeof(float));
        for (int l = 0; l < c.NumLayers; l++)
        {
            var w = model.AttnOutput(l);
            _kernels.HeadGrams(w.Type, w.Pointer, grams.Pointer, w.Rows, c.NumHeads, hd);
            var (desc, blocks, tokens) = LayerTables(l);
            _kernels.ValueNorms(_pool.Pointer, desc, blocks, tokens, grams.Pointer, norms.Pointer + (ulong)((long)HeadIndex(l, 0, 0) * group * count * sizeof(float)),
                count, count, c.NumHeads, c.NumKvHeads, hd, BlockTokens, ValueGroup, MaxBlocks);
        }
        Device.Synchronize(); // the Gram matrices go
        return norms;
    }

    /// <summary>
    /// <see cref="BeginStatistics(AttentionStatisticsRequest)"/> for KVzip+: a max fold whose probabilities p(q, h, t) of
    /// the first <paramref name="stride"/> stored tokens are weighted by <paramref name="valueNorms"/>[head, h, t] / ‖x_q‖
    /// (<see cref="KvzipPlusValueNorms"/>'s layout; x_q the row's layer input, which <see cref="CudaTransformer.Forward"/> passes).
    /// Covered tokens must lie within the first <paramref name="stride"/>. The caller keeps <paramref name="valueNorms"/> alive until the collection ends.
    /// </summary>
    /// <exception cref="ArgumentException">The request's fold is not <see cref="GroupFold.Max"/>.</exception>
    internal void BeginWeightedStatistics(AttentionStatisticsRequest request, DeviceBuffer valueNorms, int stride)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(valueNorms);
        if (request.Fold != GroupFold.Max) throw new ArgumentException("KVzip+'s weighted statistics take the maximum over the group", nameof(request));
        BeginStatistics(request);
        _valueNorms = valueNorms;
        _valueNormStride = stride;
        _rowNorms = Device.Allocate(Math.Max(1, Capacity) * sizeof(float));
    }

    /// <summary>
    /// The statistics target's KVzip+ weights for <paramref name="rows"/> rows of <paramref name="layer"/> whose layer input
    /// is <paramref name="hidden"/> [rows, hidden size]: queues their norms and returns the target with the weights (as it
    /// is when the collection is not weighted).
    /// </summary>
    /// <exception cref="InvalidOperationException">A weighted collection without the rows' layer input (only Forward passes it).</exception>
    private CudaPagedKernels.StatsTarget Weighted(CudaPagedKernels.StatsTarget target, int layer, ulong hidden, int rows)
    {
        if (_valueNorms == null || _rowNorms == null) return target;
        if (hidden == 0) throw new InvalidOperationException("KVzip+'s weighted statistics need each row's layer input: collect them through CudaTransformer.Forward");
        _kernels.RowNorms(hidden, _rowNorms.Pointer, rows, Config.HiddenSize);
        int group = Config.NumHeads / Config.NumKvHeads;
        return target with
        {
            ValueNorms = _valueNorms.Pointer + (ulong)((long)HeadIndex(layer, 0, 0) * group * _valueNormStride * sizeof(float)),
            ValueNormStride = _valueNormStride,
            RowNorms = _rowNorms.Pointer,
        };
    }
}
