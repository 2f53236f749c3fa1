using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using KvSharp.Cache.Blocks;
using KvSharp.Compute.Cpu;
using KvSharp.Models;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// KVzip+'s value weights ‖W_o^h v_t‖ for every query head h and every token t the context cache stores, computed
/// once per scoring (they do not depend on the repeat run). ‖W_o^h v‖² = vᵀ G_h v with the head's Gram matrix
/// G_h = W_o^hᵀ W_o^h [hd, hd] (W_o^h: the output projection's hd columns of head h), so each (layer, KV head) costs
/// one [stored, hd] × [hd, hd] product per head of its group instead of a [stored, hidden] one.
/// </summary>
internal sealed class KvzipPlusValueNorms
{
    private readonly float[]?[] _norms; // per (layer × KvHeads + g): [group, stored] in the cache's Positions order

    private KvzipPlusValueNorms(float[]?[] norms, int group)
    {
        _norms = norms;
        Group = group;
    }

    /// <summary>Query heads per KV head.</summary>
    public int Group { get; }

    /// <summary>
    /// ‖W_o^h v_t‖ of (layer, KV head g) as [group, stored] (row k: query head g·group + k), stored tokens in the
    /// context cache's Positions order.
    /// </summary>
    /// <exception cref="InvalidOperationException">The layer shares another layer's KV (its tokens are scored by the source).</exception>
    public ReadOnlySpan<float> Of(int layer, int g, int kvHeads)
        => _norms[layer * kvHeads + g] ?? throw new InvalidOperationException($"layer {layer} shares another layer's KV: no value norms of its own");

    /// <summary>Computes the norms of every (layer, KV head) of <paramref name="context"/>'s cache that stores its own KV.</summary>
    public static KvzipPlusValueNorms Compute(PressContext context)
    {
        var cache = context.Cache;
        int heads = context.Model.Config.NumHeads, kvHeads = context.KvHeads, d = cache.HeadDim, group = heads / kvHeads;
        var norms = new float[]?[context.Layers * kvHeads];
        var grams = new float[heads * d * d];
        for (int l = 0; l < context.Layers; l++)
        {
            if (cache.SharedLayerSource(l) >= 0) continue;
            Grams(context.Model, l, heads, d, grams);
            int layer = l;
            // One job per (KV head, head of its group): each writes its own row of its head's array.
            for (int g = 0; g < kvHeads; g++) norms[l * kvHeads + g] = new float[group * cache.Positions(l, g).Count];
            var values = Enumerable.Range(0, kvHeads).Select(g => cache.Read(layer, g).Values).ToArray();
            CpuThreads.For(heads, 1, (start, end) =>
            {
                for (int h = start; h < end; h++)
                {
                    int g = h / group, k = h % group;
                    var v = values[g];
                    int n = v.Length / d;
                    var target = norms[layer * kvHeads + g].AsSpan(k * n, n);
                    var projected = new float[v.Length];
                    // projected[t, i] = v_t · G_h[i, :] = (v_t G_h)_i since G_h is symmetric.
                    var layout = new BlockLayout(KvFormat.F32, QuantAxis.PerToken, 0, d, d);
                    BlockAttention.Scores(layout, MemoryMarshal.AsBytes(grams.AsSpan(h * d * d, d * d)), d, v, n, projected);
                    for (int t = 0; t < n; t++)
                        target[t] = MathF.Sqrt(MathF.Max(0, TensorPrimitives.Dot(projected.AsSpan(t * d, d), v.AsSpan(t * d, d))));
                }
            });
        }
        return new KvzipPlusValueNorms(norms, group);
    }

    /// <summary>Writes G_h = W_o^hᵀ W_o^h of every head of <paramref name="layer"/> into <paramref name="grams"/> [heads, hd, hd].</summary>
    private static void Grams(Transformer model, int layer, int heads, int d, float[] grams)
    {
        var w = model.Weights.Require(TensorNames.Layer(layer, TensorNames.Suffix.AttnOutput));
        int rows = (int)w.Rows, cols = heads * d;
        // The head's columns as rows: columns[h][i, r] = W_o[r, h·hd + i], so G_h[i, j] is a dot of two rows.
        var columns = new float[heads * d * rows];
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            Kernels.GetRow(w, r, row);
            for (int c = 0; c < cols; c++) columns[c * rows + r] = row[c];
        }
        CpuThreads.For(heads, 1, (start, end) =>
        {
            for (int h = start; h < end; h++)
            {
                var wt = columns.AsSpan(h * d * rows, d * rows);
                var gram = grams.AsSpan(h * d * d, d * d);
                for (int i = 0; i < d; i++)
                    for (int j = i; j < d; j++)
                        gram[i * d + j] = gram[j * d + i] = TensorPrimitives.Dot(wt.Slice(i * rows, rows), wt.Slice(j * rows, rows));
            }
        });
    }
}
