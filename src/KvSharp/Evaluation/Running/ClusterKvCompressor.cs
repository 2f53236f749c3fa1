using KvSharp.Cache;
using KvSharp.Compression.Recall;

namespace KvSharp.Evaluation.Running;

/// <summary>
/// A compressor that changes how decoding reads the cache instead of (or besides) changing the cache: generation runs
/// over the cache <see cref="ForDecoding"/> returns (ClusterKV's recall).
/// </summary>
public interface IDecodingCompressor : ICacheCompressor
{
    /// <summary>
    /// The cache the sample's questions are asked over, wrapping <see cref="CompressionInput.Cache"/> (called after
    /// <see cref="ICacheCompressor.Compress"/>); disposing it leaves the wrapped cache to the runner.
    /// </summary>
    IKvCache ForDecoding(CompressionInput input);
}

/// <summary>
/// ClusterKV as an evaluation cell: nothing is evicted; the context's keys are clustered and every decode step attends
/// only the best clusters within the budget (<see cref="ClusterKvOptions.Keep"/> = the sweep's keep ratio).
/// Multi-token passes (the question) attend everything, as in the paper's prefill.
/// </summary>
public sealed class ClusterKvCompressor(ClusterKvOptions options) : IDecodingCompressor
{
    private readonly List<ClusterKvCache> _attached = [];

    /// <summary>The settings.</summary>
    public ClusterKvOptions Options { get; } = options ?? throw new ArgumentNullException(nameof(options));

    /// <summary>Whether attached caches measure attention recall (<see cref="ClusterKvCache.MeasureRecall"/>).</summary>
    public bool MeasureRecall { get; init; }

    /// <summary>Mean attention recall over every decode step of every sample run so far (NaN when not measured).</summary>
    public double MeanRecall
    {
        get
        {
            lock (_attached)
            {
                long steps = _attached.Sum(c => c.RecallSamples);
                return steps == 0 ? double.NaN : _attached.Sum(c => c.RecallSum) / steps;
            }
        }
    }

    /// <summary>Mean tokens attended per decode step and (layer, KV head) over every sample run so far (NaN before any step).</summary>
    public double MeanSelectedTokens
    {
        get
        {
            lock (_attached)
            {
                long heads = _attached.Sum(c => c.DecodeSteps * c.Inner.Layers * c.Inner.KvHeads);
                return heads == 0 ? double.NaN : (double)_attached.Sum(c => c.SelectedTokens) / heads;
            }
        }
    }

    /// <inheritdoc />
    public string Name => Options.Text;

    /// <inheritdoc />
    public void Compress(CompressionInput input) { }

    /// <inheritdoc />
    public IKvCache ForDecoding(CompressionInput input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var cache = ClusterKvCache.Attach(input.Cache, input.Model.Config.NumHeads, Options);
        cache.MeasureRecall = MeasureRecall;
        lock (_attached) _attached.Add(cache);
        return cache;
    }
}
