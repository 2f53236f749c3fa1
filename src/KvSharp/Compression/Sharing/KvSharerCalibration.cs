using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Calibration;
using KvSharp.Models;

namespace KvSharp.Compression.Sharing;

/// <summary>
/// KVSharer's calibration on a model (<c>kvsharp calibrate kvsharer</c>): each layer's averaged cache is the mean over
/// every calibration token of its keys (after RoPE) and values, concatenated [K̄; V̄]; the similarity of a set of
/// shares is, as the paper's acceptance test, the mean over every calibration position of the cosine similarity
/// between the last hidden state (the final RMSNorm's output, which the LM head multiplies) of the model run with those
/// layers sharing from the first token and that of the unshared model. <see cref="KvSharerSearch"/> then picks the
/// shares.
/// </summary>
public sealed class KvSharerCalibration
{
    private readonly Transformer _model;
    private readonly IReadOnlyList<int[]> _windows;
    private readonly float[][] _reference;

    /// <summary>Runs the unshared model over <paramref name="windows"/> once (layer means and reference hidden states).</summary>
    /// <exception cref="KvSharpException">No window, or an empty one.</exception>
    public KvSharerCalibration(Transformer model, IReadOnlyList<int[]> windows)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(windows);
        if (windows.Count == 0) throw new KvSharpException("kvsharer calibration: no calibration window");
        if (windows.Any(w => w.Length == 0)) throw new KvSharpException("kvsharer calibration: an empty window");
        _model = model;
        _windows = windows;
        var c = model.Config;
        int row = c.NumKvHeads * c.HeadDim;
        var sums = new double[c.NumLayers][];
        for (int l = 0; l < sums.Length; l++) sums[l] = new double[2 * row];
        long tokens = 0;
        _reference = new float[windows.Count][];
        for (int w = 0; w < windows.Count; w++)
        {
            using var cache = NewCache(windows[w].Length);
            var observer = new ObservingKvCache(cache)
            {
                Appended = (layer, keys, values, count) =>
                {
                    var s = sums[layer];
                    for (int t = 0; t < count; t++)
                        for (int i = 0; i < row; i++) { s[i] += keys[t * row + i]; s[row + i] += values[t * row + i]; }
                },
            };
            _reference[w] = model.ForwardHidden(windows[w], observer);
            tokens += windows[w].Length;
        }
        LayerMeans = sums.Select(s => s.Select(x => x / tokens).ToArray()).ToArray();
    }

    /// <summary>Each layer's averaged cache [K̄; V̄] over the calibration tokens.</summary>
    public IReadOnlyList<double[]> LayerMeans { get; }

    /// <summary>
    /// Mean, over every calibration position, of the cosine similarity of the last hidden state of the model with
    /// <paramref name="shares"/> to the unshared model's.
    /// </summary>
    public double Similarity(IReadOnlyList<LayerShare> shares)
    {
        ArgumentNullException.ThrowIfNull(shares);
        int hidden = _model.Config.HiddenSize;
        double sum = 0;
        long count = 0;
        for (int w = 0; w < _windows.Count; w++)
        {
            var states = SharedHidden(_windows[w], shares);
            for (int t = 0; t < _windows[w].Length; t++, count++)
                sum += VectorSimilarity.Cosine(_reference[w].AsSpan(t * hidden, hidden), states.AsSpan(t * hidden, hidden));
        }
        return sum / count;
    }

    /// <summary>
    /// Last hidden states [tokens × hiddenSize] (final-norm output) of the model run with <paramref name="shares"/>
    /// applied from the first token.
    /// </summary>
    public float[] SharedHidden(int[] tokens, IReadOnlyList<LayerShare> shares)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(shares);
        using var cache = NewCache(tokens.Length);
        foreach (var s in shares) cache.ShareLayer(s.Layer, s.Source);
        return _model.ForwardHidden(tokens, cache);
    }

    /// <summary>Runs <see cref="KvSharerSearch"/> over this model.</summary>
    public KvSharerSearchResult Search(double threshold, int maxShared, IProgress<double>? progress = null) =>
        KvSharerSearch.Run(LayerMeans, Similarity, threshold, maxShared, progress);

    private PagedKvCache NewCache(int tokens) =>
        new(_model.Config, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = tokens });
}
