using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Calibration;
using KvSharp.Models;

namespace KvSharp.Compression.Sharing;

/// <summary>
/// KVSharer's calibration on a model (<c>kvsharp calibrate kvsharer</c>): each layer's averaged cache is the mean over
/// every calibration token of its keys (after RoPE) and values, concatenated [K̄; V̄]; the similarity of a set of
/// shares is the mean, over every calibration position, of the cosine similarity between the centred logits of the
/// model run with those layers sharing from the first token and the centred logits of the unshared model (centring
/// removes the softmax-irrelevant shift, so it compares what the two outputs predict). <see cref="KvSharerSearch"/>
/// then picks the shares.
/// </summary>
public sealed class KvSharerCalibration
{
    private readonly Transformer _model;
    private readonly IReadOnlyList<int[]> _windows;
    private readonly float[][] _reference;

    /// <summary>Runs the unshared model over <paramref name="windows"/> once (layer means and reference logits).</summary>
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
            _reference[w] = model.Forward(windows[w], observer, LogitsMode.All);
            tokens += windows[w].Length;
        }
        LayerMeans = sums.Select(s => s.Select(x => x / tokens).ToArray()).ToArray();
    }

    /// <summary>Each layer's averaged cache [K̄; V̄] over the calibration tokens.</summary>
    public IReadOnlyList<double[]> LayerMeans { get; }

    /// <summary>Mean centred-logit cosine similarity of the model with <paramref name="shares"/> to the unshared model.</summary>
    public double Similarity(IReadOnlyList<LayerShare> shares)
    {
        ArgumentNullException.ThrowIfNull(shares);
        int vocab = _model.Config.VocabSize;
        double sum = 0;
        long count = 0;
        for (int w = 0; w < _windows.Count; w++)
        {
            var logits = SharedLogits(_windows[w], shares);
            for (int t = 0; t < _windows[w].Length; t++, count++)
                sum += CentredCosine(_reference[w].AsSpan(t * vocab, vocab), logits.AsSpan(t * vocab, vocab));
        }
        return sum / count;
    }

    /// <summary>Logits [tokens × vocab] of the model run with <paramref name="shares"/> applied from the first token.</summary>
    public float[] SharedLogits(int[] tokens, IReadOnlyList<LayerShare> shares)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(shares);
        using var cache = NewCache(tokens.Length);
        foreach (var s in shares) cache.ShareLayer(s.Layer, s.Source);
        return _model.Forward(tokens, cache, LogitsMode.All);
    }

    /// <summary>Runs <see cref="KvSharerSearch"/> over this model.</summary>
    public KvSharerSearchResult Search(double threshold, int maxShared, IProgress<double>? progress = null) =>
        KvSharerSearch.Run(LayerMeans, Similarity, threshold, maxShared, progress);

    /// <summary>cos(a − mean a, b − mean b) in float64.</summary>
    public static double CentredCosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double ma = 0, mb = 0;
        for (int i = 0; i < a.Length; i++) { ma += a[i]; mb += b[i]; }
        ma /= a.Length;
        mb /= b.Length;
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++)
        {
            double x = a[i] - ma, y = b[i] - mb;
            ab += x * y; aa += x * x; bb += y * y;
        }
        return aa == 0 || bb == 0 ? (aa == bb ? 1 : 0) : ab / Math.Sqrt(aa * bb);
    }

    private PagedKvCache NewCache(int tokens) =>
        new(_model.Config, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = tokens });
}
