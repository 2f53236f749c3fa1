using KvSharp.Cache.Blocks;

namespace KvSharp.Tests.Cache.Paged;

/// <summary>
/// The test's own model of a KV cache: per (layer, KV head) a list of (original position, key, value) in float,
/// with float64 causal attention over whatever tokens each head keeps. Independent of the cache's code.
/// </summary>
internal sealed class ReferenceKv
{
    public sealed record Token(int Pos, float[] K, float[] V);

    public ReferenceKv(int layers, int heads, int kvHeads, int headDim)
    {
        Layers = layers; Heads = heads; KvHeads = kvHeads; HeadDim = headDim;
        Heads_ = Enumerable.Range(0, layers * kvHeads).Select(_ => new List<Token>()).ToArray();
        LayerLength = new int[layers];
        ShareSource = Enumerable.Repeat(-1, layers).ToArray();
    }

    public int Layers { get; }
    public int Heads { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    public List<Token>[] Heads_ { get; private set; }
    public int[] LayerLength { get; private set; }

    /// <summary>Per layer, the layer whose tokens it reads (cross-layer sharing), -1 = its own.</summary>
    public int[] ShareSource { get; private set; }
    public int Length => LayerLength[^1];

    public List<Token> Head(int layer, int g) => Heads_[(ShareSource[layer] >= 0 ? ShareSource[layer] : layer) * KvHeads + g];

    /// <summary>Layer <paramref name="layer"/> drops its tokens and reads <paramref name="source"/>'s from now on.</summary>
    public void Share(int layer, int source)
    {
        for (int g = 0; g < KvHeads; g++) Heads_[layer * KvHeads + g].Clear();
        ShareSource[layer] = source;
    }

    public void Append(int layer, float[] keys, float[] values, int count)
    {
        int row = KvHeads * HeadDim;
        for (int g = 0; g < KvHeads && ShareSource[layer] < 0; g++)
            for (int t = 0; t < count; t++)
                Head(layer, g).Add(new Token(LayerLength[layer] + t,
                    keys.AsSpan(t * row + g * HeadDim, HeadDim).ToArray(), values.AsSpan(t * row + g * HeadDim, HeadDim).ToArray()));
        LayerLength[layer] += count;
    }

    public void Truncate(int length)
    {
        foreach (var h in Heads_) h.RemoveAll(t => t.Pos >= length);
        for (int l = 0; l < Layers; l++) LayerLength[l] = Math.Min(LayerLength[l], length);
    }

    public void Evict(int layer, int g, IReadOnlySet<int> positions) => Head(layer, g).RemoveAll(t => positions.Contains(t.Pos));

    public ReferenceKv Clone() => new(Layers, Heads, KvHeads, HeadDim)
    {
        Heads_ = Heads_.Select(h => h.ToList()).ToArray(),
        LayerLength = (int[])LayerLength.Clone(),
        ShareSource = (int[])ShareSource.Clone(),
    };

    /// <summary>Replaces the first <paramref name="blocks"/>·Tokens tokens of every head by their BlockCodec round trip, block by block.</summary>
    public void RoundTripBlocks(BlockLayout keys, BlockLayout values, int blocks)
    {
        int b = keys.Tokens, d = HeadDim;
        foreach (var h in Heads_)
            for (int i = 0; i < blocks; i++)
            {
                var k = new float[b * d]; var v = new float[b * d];
                for (int t = 0; t < b; t++) { h[i * b + t].K.CopyTo(k, t * d); h[i * b + t].V.CopyTo(v, t * d); }
                var kb = new byte[keys.ByteSize]; var vb = new byte[values.ByteSize];
                BlockCodec.Encode(keys, k, b, kb); BlockCodec.Decode(keys, kb, b, k);
                BlockCodec.Encode(values, v, b, vb); BlockCodec.Decode(values, vb, b, v);
                for (int t = 0; t < b; t++)
                    h[i * b + t] = h[i * b + t] with { K = k.AsSpan(t * d, d).ToArray(), V = v.AsSpan(t * d, d).ToArray() };
            }
    }

    /// <summary>
    /// Replaces stored tokens <paramref name="from"/>..+<paramref name="count"/> of (layer, g) by their BlockCodec round
    /// trip as one block of keys in <paramref name="keys"/> and values in <paramref name="values"/> (what the cache
    /// does with a run of tokens re-encoded together).
    /// </summary>
    public void RoundTripRun(int layer, int g, int from, int count, BlockLayout keys, BlockLayout values)
    {
        var h = Head(layer, g);
        int d = HeadDim;
        var k = new float[count * d]; var v = new float[count * d];
        for (int t = 0; t < count; t++) { h[from + t].K.CopyTo(k, t * d); h[from + t].V.CopyTo(v, t * d); }
        var kb = new byte[keys.ByteSize]; var vb = new byte[values.ByteSize];
        BlockCodec.Encode(keys, k, count, kb); BlockCodec.Decode(keys, kb, count, k);
        BlockCodec.Encode(values, v, count, vb); BlockCodec.Decode(values, vb, count, v);
        for (int t = 0; t < count; t++)
            h[from + t] = h[from + t] with { K = k.AsSpan(t * d, d).ToArray(), V = v.AsSpan(t * d, d).ToArray() };
    }

    /// <summary>
    /// Replaces the tokens of (layer, g) at <paramref name="positions"/> (ascending, not necessarily consecutive) by
    /// their BlockCodec round trip as one block of keys in <paramref name="keys"/> and values in <paramref name="values"/>:
    /// what the cache does with same-format tokens it regroups into one block.
    /// </summary>
    public void RoundTripSet(int layer, int g, IReadOnlyList<int> positions, BlockLayout keys, BlockLayout values)
    {
        var h = Head(layer, g);
        var index = positions.Select(p => h.FindIndex(t => t.Pos == p)).ToArray();
        if (index.Contains(-1)) throw new InvalidOperationException("round trip of a position the reference does not hold");
        int d = HeadDim, count = index.Length;
        var k = new float[count * d]; var v = new float[count * d];
        for (int t = 0; t < count; t++) { h[index[t]].K.CopyTo(k, t * d); h[index[t]].V.CopyTo(v, t * d); }
        var kb = new byte[keys.ByteSize]; var vb = new byte[values.ByteSize];
        BlockCodec.Encode(keys, k, count, kb); BlockCodec.Decode(keys, kb, count, k);
        BlockCodec.Encode(values, v, count, vb); BlockCodec.Decode(values, vb, count, v);
        for (int t = 0; t < count; t++)
            h[index[t]] = h[index[t]] with { K = k.AsSpan(t * d, d).ToArray(), V = v.AsSpan(t * d, d).ToArray() };
    }

    /// <summary>float64 attention of <paramref name="count"/> query rows at firstPosition.. over each head's kept tokens at positions ≤ the query's.</summary>
    public double[] Attend(int layer, float[] queries, int count, int firstPosition)
    {
        int d = HeadDim, group = Heads / KvHeads, qRow = Heads * d;
        var o = new double[count * qRow];
        double scale = 1 / Math.Sqrt(d);
        for (int t = 0; t < count; t++)
            for (int h = 0; h < Heads; h++)
            {
                var visible = Head(layer, h / group).Where(x => x.Pos <= firstPosition + t).ToList();
                if (visible.Count == 0) continue;
                var s = visible.Select(x =>
                {
                    double dot = 0;
                    for (int c = 0; c < d; c++) dot += (double)queries[t * qRow + h * d + c] * x.K[c];
                    return dot * scale;
                }).ToArray();
                double max = s.Max(), sum = 0;
                for (int j = 0; j < s.Length; j++) { s[j] = Math.Exp(s[j] - max); sum += s[j]; }
                for (int j = 0; j < s.Length; j++)
                    for (int c = 0; c < d; c++) o[t * qRow + h * d + c] += s[j] / sum * visible[j].V[c];
            }
        return o;
    }
}

/// <summary>Random inputs and comparisons for the paged cache tests.</summary>
internal static class PagedTestData
{
    public static float[] Gaussians(Random rng, int n, double sigma = 1)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            x[i] = (float)(sigma * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return x;
    }

    /// <summary>Rounds every element through a float format's codec, so storing it in that format is exact.</summary>
    public static float[] Representable(float[] x, KvFormat format, int headDim)
    {
        if (format == KvFormat.F32 || format.IsQuantized()) return x; // quantized: only float formats round per element
        var layout = new BlockLayout(format, QuantAxis.PerToken, 0, 1, headDim);
        var bytes = new byte[layout.ByteSize];
        var y = new float[x.Length];
        for (int r = 0; r < x.Length / headDim; r++)
        {
            BlockCodec.Encode(layout, x.AsSpan(r * headDim, headDim), 1, bytes);
            BlockCodec.Decode(layout, bytes, 1, y.AsSpan(r * headDim, headDim));
        }
        return y;
    }

    /// <summary>|a − e| ≤ tol · max(1, max|e|) for every element.</summary>
    public static void AssertClose(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, double tolerance, string where)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = 1;
        foreach (var e in expected) scale = Math.Max(scale, Math.Abs(e));
        for (int i = 0; i < expected.Length; i++)
        {
            double err = Math.Abs(actual[i] - expected[i]);
            Assert.True(err <= tolerance * scale, $"{where}, element {i}: cache {actual[i]}, reference {expected[i]}, error {err:E2} > {tolerance * scale:E2}");
        }
    }

    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double tolerance, string where)
    {
        var e = new double[expected.Length];
        for (int i = 0; i < e.Length; i++) e[i] = expected[i];
        AssertClose(e, actual, tolerance, where);
    }
}
