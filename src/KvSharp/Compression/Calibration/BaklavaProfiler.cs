using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Models;

namespace KvSharp.Compression.Calibration;

/// <summary>
/// BaKlaVa's head importance profile (<c>kvsharp calibrate baklava</c>): how much an attention head changes what
/// it reads. For every calibration token t and query head h of KV head g, the head's input is read as the value
/// vector v_t^g of the token itself (what the head would return attending only to t) and its output as the attention
/// output o_t^h (before the output projection); importance(l, g) = mean over tokens, windows and the query heads of g
/// of 1 − cos(v_t^g, o_t^h). More change = more important; a head that mostly copies its own token scores near 0.
/// </summary>
public static class BaklavaProfiler
{
    /// <summary>The method name written in the profile file.</summary>
    public const string Method = "baklava";

    /// <summary>Profiles <paramref name="model"/> on <paramref name="windows"/>; <paramref name="progress"/> gets the fraction of windows done.</summary>
    /// <exception cref="KvSharpException">No window, or an empty one.</exception>
    public static HeadProfile Run(Transformer model, IReadOnlyList<int[]> windows, IProgress<double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(windows);
        if (windows.Count == 0) throw new KvSharpException("baklava calibration: no calibration window");
        var c = model.Config;
        var accumulator = new Accumulator(c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim);
        for (int w = 0; w < windows.Count; w++)
        {
            if (windows[w].Length == 0) throw new KvSharpException($"baklava calibration: window {w} is empty");
            using var cache = new PagedKvCache(c, new PagedKvCacheOptions { KeyFormat = KvFormat.F32, ValueFormat = KvFormat.F32, MaxTokens = windows[w].Length });
            model.Forward(windows[w], accumulator.Observe(cache));
            progress?.Report((w + 1.0) / windows.Count);
        }
        return accumulator.Profile();
    }

    /// <summary>Sums 1 − cos(value of the query's own token, head output) per (layer, KV head) from an observed forward pass.</summary>
    public sealed class Accumulator(int layers, int heads, int kvHeads, int headDim)
    {
        private readonly double[,] _sum = new double[layers, kvHeads];
        private readonly long[,] _count = new long[layers, kvHeads];
        private readonly float[][] _values = new float[layers][];

        /// <summary>A cache over <paramref name="inner"/> that feeds this accumulator.</summary>
        public ObservingKvCache Observe(Cache.IKvCache inner) => new(inner) { Appended = OnAppend, Attended = OnAttend };

        /// <summary>Remembers the layer's newest values (those of the queries about to attend).</summary>
        public void OnAppend(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count) =>
            _values[layer] = values[..(count * kvHeads * headDim)].ToArray();

        /// <summary>Adds 1 − cos(v, o) of every query row and head.</summary>
        public void OnAttend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, ReadOnlySpan<float> output)
        {
            var values = _values[layer] ?? throw new InvalidOperationException($"layer {layer} attended before any append");
            int group = heads / kvHeads;
            for (int t = 0; t < count; t++)
                for (int h = 0; h < heads; h++)
                {
                    int g = h / group;
                    var v = values.AsSpan((t * kvHeads + g) * headDim, headDim);
                    var o = output.Slice((t * heads + h) * headDim, headDim);
                    _sum[layer, g] += 1 - VectorSimilarity.Cosine(v, o);
                    _count[layer, g]++;
                }
        }

        /// <summary>The mean importance per (layer, KV head).</summary>
        public HeadProfile Profile() => new(Method, Enumerable.Range(0, layers)
            .Select(l => (IReadOnlyList<double>)Enumerable.Range(0, kvHeads).Select(g => _count[l, g] == 0 ? 0 : _sum[l, g] / _count[l, g]).ToArray()).ToArray());
    }
}
