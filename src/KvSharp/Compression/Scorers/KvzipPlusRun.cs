using System.Numerics.Tensors;
using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;
using KvSharp.Models;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// One KVzip+ repeat run: the run's tokens go through the model over a fork of the cache (this wrapper forwards
/// Append and Attend to it) while, per layer, every run query's softmax weights over the stored tokens are recomputed
/// and each covered context token keeps max over queries q and the group's heads h of
/// p(q,h,t) · ‖W_o^h v_t‖ / ‖x_q‖ — W_o^h the output projection's columns of head h, v_t the stored value, x_q the
/// residual hidden state entering the layer at q (seen through <see cref="IForwardObserver"/>).
/// ‖W_o^h v‖ = sqrt(vᵀ (W_o^hᵀ W_o^h) v) through a per-head Gram matrix.
/// </summary>
internal sealed class KvzipPlusRun : IKvCache, IForwardObserver
{
    private readonly PressContext _context;
    private readonly PagedKvCache _fork;
    private readonly int _from, _to, _heads, _d;
    private readonly float[][] _result; // per head (layer × KvHeads + g), aligned with the context cache's Positions
    private float[] _hiddenNorms = [];

    private KvzipPlusRun(PressContext context, PagedKvCache fork, int from, int to, float[][] result)
    {
        _context = context; _fork = fork; _from = from; _to = to; _result = result;
        _heads = context.Model.Config.NumHeads;
        _d = context.Cache.HeadDim;
    }

    /// <summary>
    /// Runs <paramref name="run"/> after the context on a fork and raises <paramref name="scores"/> of the context
    /// tokens at positions [<paramref name="from"/>, <paramref name="to"/>) to their weighted maximum.
    /// </summary>
    public static void Score(PressContext context, ReadOnlySpan<int> run, int from, int to, HeadScores scores)
    {
        using var fork = context.Cache.Fork();
        var result = Enumerable.Range(0, scores.HeadCount).Select(i => scores[i]).ToArray();
        var observer = new KvzipPlusRun(context, fork, from, to, result);
        context.Model.Forward(run, observer, LogitsMode.Last, observer);
    }

    public int Length => _fork.Length;

    public long ByteCount => _fork.ByteCount;

    public void Append(int layer, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int count) => _fork.Append(layer, keys, values, count);

    public void Truncate(int length) => _fork.Truncate(length);

    public void LayerInput(int layer, ReadOnlySpan<float> hidden, int count, int firstPosition)
    {
        int size = hidden.Length / count;
        _hiddenNorms = new float[count];
        for (int t = 0; t < count; t++) _hiddenNorms[t] = TensorPrimitives.Norm(hidden.Slice(t * size, size));
    }

    public void Attend(int layer, ReadOnlySpan<float> queries, int count, int firstPosition, Span<float> output)
    {
        _fork.Attend(layer, queries, count, firstPosition, output);
        if (_context.Cache.SharedLayerSource(layer) >= 0) return; // a shared layer's tokens are scored by its source
        var q = queries.Slice(0, count * _heads * _d).ToArray();
        var gram = Gram(layer);
        for (int g = 0; g < _context.KvHeads; g++) ScoreHead(layer, g, q, count, firstPosition, gram);
    }

    /// <summary>W_o^hᵀ W_o^h [hd, hd] per query head h of <paramref name="layer"/>.</summary>
    private double[][] Gram(int layer)
    {
        var w = _context.Model.Weights.Require(TensorNames.Layer(layer, TensorNames.Suffix.AttnOutput));
        int rows = (int)w.Rows, cols = _heads * _d;
        var gram = new double[_heads][];
        for (int h = 0; h < _heads; h++) gram[h] = new double[_d * _d];
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            Kernels.GetRow(w, r, row);
            for (int h = 0; h < _heads; h++)
            {
                var m = gram[h];
                for (int i = 0; i < _d; i++)
                {
                    double a = row[h * _d + i];
                    for (int j = 0; j < _d; j++) m[i * _d + j] += a * row[h * _d + j];
                }
            }
        }
        return gram;
    }

    private void ScoreHead(int layer, int g, float[] q, int count, int firstPosition, double[][] gram)
    {
        var (keys, values) = _fork.Read(layer, g);
        var positions = _fork.Positions(layer, g);
        int n = positions.Count, group = _heads / _context.KvHeads;
        int i0 = 0;
        while (i0 < n && positions[i0] < _from) i0++;
        int i1 = i0;
        while (i1 < n && positions[i1] < _to) i1++;
        if (i1 == i0) return;
        // ‖W_o^h v_t‖ of the covered tokens for each head of the group.
        var vnorm = new float[group * (i1 - i0)];
        for (int k = 0; k < group; k++)
        {
            var m = gram[g * group + k];
            for (int i = i0; i < i1; i++)
            {
                var v = values.AsSpan(i * _d, _d);
                double s = 0;
                for (int a = 0; a < _d; a++)
                {
                    double row = 0;
                    for (int b = 0; b < _d; b++) row += m[a * _d + b] * v[b];
                    s += v[a] * row;
                }
                vnorm[k * (i1 - i0) + i - i0] = (float)Math.Sqrt(Math.Max(s, 0));
            }
        }
        // The context cache's index of the first covered token (fork and cache store the same context tokens).
        var stored = _context.Cache.Positions(layer, g);
        int c0 = 0;
        while (c0 < stored.Count && stored[c0] < positions[i0]) c0++;
        var target = _result[layer * _context.KvHeads + g];
        var gate = new object();
        float scale = 1 / MathF.Sqrt(_d);
        CpuThreads.For(count, 4, (start, end) =>
        {
            var local = new float[i1 - i0];
            var logits = new float[n];
            for (int t = start; t < end; t++)
            {
                int position = firstPosition + t, visible = 0;
                while (visible < n && positions[visible] <= position) visible++;
                for (int k = 0; k < group; k++)
                {
                    int h = g * group + k;
                    var qh = q.AsSpan((t * _heads + h) * _d, _d);
                    for (int i = 0; i < visible; i++) logits[i] = TensorPrimitives.Dot(qh, keys.AsSpan(i * _d, _d)) * scale;
                    float max = TensorPrimitives.Max(logits.AsSpan(0, visible));
                    double sum = 0;
                    for (int i = 0; i < visible; i++) sum += Math.Exp(logits[i] - max);
                    double factor = 1 / (sum * _hiddenNorms[t]);
                    for (int i = i0; i < Math.Min(i1, visible); i++)
                    {
                        float w = (float)(Math.Exp(logits[i] - max) * factor * vnorm[k * (i1 - i0) + i - i0]);
                        if (w > local[i - i0]) local[i - i0] = w;
                    }
                }
            }
            lock (gate)
                for (int i = 0; i < local.Length; i++)
                    if (local[i] > target[c0 + i]) target[c0 + i] = local[i];
        });
    }

    public void Dispose() { }
}
