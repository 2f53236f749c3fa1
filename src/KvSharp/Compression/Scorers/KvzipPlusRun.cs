using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;
using KvSharp.Models;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// One KVzip+ repeat run: the run's tokens go through the model over a fork of the cache (this wrapper forwards
/// Append and Attend to it) while, per layer, every run query's softmax weights over the stored tokens are recomputed
/// and each covered context token keeps max over queries q and the group's heads h of
/// p(q,h,t) · ‖W_o^h v_t‖ / ‖x_q‖ — W_o^h the output projection's columns of head h, v_t the stored value, x_q the
/// residual hidden state entering the layer at q (seen through <see cref="IForwardObserver"/>), ‖W_o^h v_t‖ from
/// <see cref="KvzipPlusValueNorms"/>. The weights are recomputed as the cache's statistics pass does for plain KVzip
/// (the block score kernel over tiles of queries, a vectorized softmax), so a run costs about one more attention pass.
/// </summary>
internal sealed class KvzipPlusRun : IKvCache, IForwardObserver
{
    /// <summary>Query positions per job: with the group's heads, a tile of rows scored against every stored key at once.</summary>
    private const int PositionsPerJob = 8;

    private readonly PressContext _context;
    private readonly KvzipPlusValueNorms _valueNorms;
    private readonly PagedKvCache _fork;
    private readonly int _from, _to, _heads, _d;
    private readonly float[][] _result; // per head (layer × KvHeads + g), aligned with the context cache's Positions
    private float[] _hiddenNorms = [];

    private KvzipPlusRun(PressContext context, KvzipPlusValueNorms valueNorms, PagedKvCache fork, int from, int to, float[][] result)
    {
        _context = context; _valueNorms = valueNorms; _fork = fork; _from = from; _to = to; _result = result;
        _heads = context.Model.Config.NumHeads;
        _d = context.Cache.HeadDim;
    }

    /// <summary>
    /// Runs <paramref name="run"/> after the context on a fork and raises <paramref name="scores"/> of the context
    /// tokens at positions [<paramref name="from"/>, <paramref name="to"/>) to their weighted maximum.
    /// </summary>
    public static void Score(PressContext context, KvzipPlusValueNorms valueNorms, ReadOnlySpan<int> run, int from, int to, HeadScores scores)
    {
        using var fork = context.Cache.Fork();
        var result = Enumerable.Range(0, scores.HeadCount).Select(i => scores[i]).ToArray();
        var observer = new KvzipPlusRun(context, valueNorms, fork, from, to, result);
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
        var heads = Enumerable.Range(0, _context.KvHeads).Select(g => Covered(layer, g)).Where(h => h != null).Select(h => h!).ToArray();
        if (heads.Length == 0) return;
        // The queries pre-scaled by 1/√d, as attention scores them.
        var q = new float[count * _heads * _d];
        TensorPrimitives.Multiply(queries[..q.Length], 1f / MathF.Sqrt(_d), q);
        int tiles = (count + PositionsPerJob - 1) / PositionsPerJob;
        CpuThreads.For(heads.Length * tiles, 1, (start, end) =>
        {
            // Buffers per range of jobs, not per tile: a tile's scores are hundreds of KB.
            var scratch = new Scratch(heads.Length);
            for (int job = start; job < end; job++)
            {
                int t0 = job % tiles * PositionsPerJob;
                ScoreTile(heads[job / tiles], job / tiles, q, t0, Math.Min(PositionsPerJob, count - t0), firstPosition, scratch);
            }
            for (int i = 0; i < heads.Length; i++)
                if (scratch.Locals[i] is { } local) heads[i].Locals.Add(local);
        });
        foreach (var head in heads)
        {
            var target = _result[layer * _context.KvHeads + head.G].AsSpan(head.C0, head.I1 - head.I0);
            foreach (var local in head.Locals) TensorPrimitives.Max(target, local, target);
        }
    }

    /// <summary>What one (layer, KV head) of an Attend call scores: the fork's keys and the run's covered tokens.</summary>
    private sealed class CoveredHead(int g, float[] keys, int[] positions, int i0, int i1, int c0, float[] valueNorms, int group)
    {
        public int G { get; } = g;
        public float[] Keys { get; } = keys;
        public int[] Positions { get; } = positions;

        /// <summary>The covered tokens' fork storage indices [I0, I1) and the context cache's index of the first (C0).</summary>
        public int I0 { get; } = i0;
        public int I1 { get; } = i1;
        public int C0 { get; } = c0;

        /// <summary>‖W_o^h v_t‖ of the covered tokens, [group, I1 − I0].</summary>
        public float[] ValueNorms { get; } = valueNorms;
        public int Group { get; } = group;

        /// <summary>Each job's maxima over the covered tokens, folded into the result after the jobs (no locks while scoring).</summary>
        public System.Collections.Concurrent.ConcurrentBag<float[]> Locals { get; } = [];
    }

    private CoveredHead? Covered(int layer, int g)
    {
        var positions = _fork.Positions(layer, g).ToArray();
        int n = positions.Length;
        int i0 = LowerBound(positions, _from), i1 = LowerBound(positions, _to);
        if (i1 == i0) return null;
        // The context cache's index of the first covered token (fork and cache store the same context tokens).
        var stored = _context.Cache.Positions(layer, g);
        int c0 = 0;
        while (c0 < stored.Count && stored[c0] < positions[i0]) c0++;
        int covered = i1 - i0, group = _heads / _context.KvHeads;
        var all = _valueNorms.Of(layer, g, _context.KvHeads);
        var norms = new float[group * covered];
        for (int k = 0; k < group; k++) all.Slice(k * stored.Count + c0, covered).CopyTo(norms.AsSpan(k * covered, covered));
        var (keys, _) = _fork.Read(layer, g);
        return new CoveredHead(g, keys, positions, i0, i1, c0, norms, group);
    }

    /// <summary>The first index whose position is ≥ <paramref name="position"/> (positions ascend).</summary>
    private static int LowerBound(int[] positions, int position)
    {
        int i = Array.BinarySearch(positions, position);
        return i >= 0 ? i : ~i;
    }

    /// <summary>One job range's buffers and its maxima per covered head (null until the range scores that head).</summary>
    private sealed class Scratch(int heads)
    {
        public float[] Tile = [];
        public float[] Scores = [];
        public float[]?[] Locals { get; } = new float[heads][];
    }

    /// <summary>
    /// Scores the run positions t0..t0+m−1 of every head of the group against all the fork's keys of
    /// <paramref name="head"/> (the <paramref name="index"/>-th covered head) and raises the range's maxima.
    /// </summary>
    private void ScoreTile(CoveredHead head, int index, float[] q, int t0, int m, int firstPosition, Scratch s)
    {
        int group = head.Group, rows = m * group, n = head.Positions.Length, covered = head.I1 - head.I0;
        if (s.Tile.Length < rows * _d) s.Tile = new float[PositionsPerJob * group * _d];
        if (s.Scores.Length < rows * n) s.Scores = new float[PositionsPerJob * group * n];
        var tile = s.Tile.AsSpan(0, rows * _d);
        for (int j = 0; j < m; j++)
            q.AsSpan(((t0 + j) * _heads + head.G * group) * _d, group * _d).CopyTo(tile[(j * group * _d)..]);
        var scores = s.Scores.AsSpan(0, rows * n);
        var layout = new BlockLayout(KvFormat.F32, QuantAxis.PerToken, 0, n, _d);
        BlockAttention.Scores(layout, MemoryMarshal.AsBytes(head.Keys.AsSpan()), n, tile, rows, scores);
        var local = s.Locals[index] ??= new float[covered];
        for (int j = 0; j < m; j++)
        {
            // Causal: the query sees the stored tokens up to its own position.
            int visible = LowerBound(head.Positions, firstPosition + t0 + j + 1);
            int seen = Math.Min(head.I1, visible) - head.I0;
            if (seen <= 0) continue;
            for (int k = 0; k < group; k++)
            {
                var p = scores.Slice((j * group + k) * n, visible);
                float max = TensorPrimitives.Max(p);
                TensorPrimitives.Subtract(p, max, p);
                TensorPrimitives.Exp(p, p);
                float factor = 1 / (TensorPrimitives.Sum(p) * _hiddenNorms[t0 + j]);
                var w = p.Slice(head.I0, seen);
                TensorPrimitives.Multiply(w, head.ValueNorms.AsSpan(k * covered, seen), w);
                TensorPrimitives.Multiply(w, factor, w);
                TensorPrimitives.Max(local.AsSpan(0, seen), w, local.AsSpan(0, seen));
            }
        }
    }

    public void Dispose() { }
}
