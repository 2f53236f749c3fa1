using System.Numerics.Tensors;

namespace KvSharp.Compression.Recall;

/// <summary>
/// One (layer, KV head) of <see cref="ClusterKvCache"/>: every token's key and value (rows in position order), the
/// clusters of the clustered rows, and which rows are still unclustered (the most recent ones).
/// </summary>
internal sealed class ClusterKvHead(int headDim)
{
    private readonly int _d = headDim;
    private readonly List<float> _keys = [], _values = [];
    private readonly List<int> _positions = [];
    private readonly List<(float[] Centroid, List<int> Rows)> _clusters = [];
    private int _pending; // rows ≥ _pending are unclustered (sinks below it are never clustered)

    /// <summary>Rows stored.</summary>
    public int Count => _positions.Count;

    /// <summary>Rows appended since the last clustering (always attended).</summary>
    public int Unclustered => Count - _pending;

    /// <summary>Clusters (for tests and reports).</summary>
    public IReadOnlyList<(float[] Centroid, List<int> Rows)> Clusters => _clusters;

    public IReadOnlyList<int> Positions => _positions;

    public ReadOnlySpan<float> Key(int row) => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_keys).Slice(row * _d, _d);

    public ReadOnlySpan<float> Value(int row) => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_values).Slice(row * _d, _d);

    public void Append(ReadOnlySpan<float> key, ReadOnlySpan<float> value, int position)
    {
        foreach (var x in key) _keys.Add(x);
        foreach (var x in value) _values.Add(x);
        _positions.Add(position);
    }

    /// <summary>Clusters the unclustered rows that are not sinks into <paramref name="clusters"/> clusters (at most one per row).</summary>
    public void ClusterPending(int sinks, int clusters, int iterations)
    {
        int first = _pending;
        while (first < Count && _positions[first] < sinks) first++;
        int n = Count - first;
        _pending = Count;
        if (n == 0) return;
        var keys = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_keys).Slice(first * _d, n * _d);
        var (centroids, assignment) = CosineKMeans.Cluster(keys, _d, clusters, iterations);
        int k = centroids.Length / _d, start = _clusters.Count;
        for (int c = 0; c < k; c++) _clusters.Add((centroids.AsSpan(c * _d, _d).ToArray(), []));
        for (int i = 0; i < n; i++) _clusters[start + assignment[i]].Rows.Add(first + i);
        _clusters.RemoveAll(c => c.Rows.Count == 0);
    }

    /// <summary>
    /// The rows one decode step attends, ascending: the sinks, the unclustered rows, and whole clusters in decreasing
    /// order of Σ_h q_h·centroid over the group's queries <paramref name="groupQueries"/> ([group, d]) while their
    /// tokens together stay within <paramref name="budget"/> (ties: the earlier cluster).
    /// </summary>
    public int[] Select(ReadOnlySpan<float> groupQueries, int budget, int sinks)
    {
        int group = groupQueries.Length / _d;
        var scores = new float[_clusters.Count];
        for (int c = 0; c < scores.Length; c++)
            for (int h = 0; h < group; h++) scores[c] += TensorPrimitives.Dot(groupQueries.Slice(h * _d, _d), _clusters[c].Centroid);
        var order = Enumerable.Range(0, scores.Length).ToArray();
        Array.Sort(order, (a, b) => scores[b] != scores[a] ? scores[b].CompareTo(scores[a]) : a.CompareTo(b));
        var rows = new List<int>();
        for (int r = 0; r < _pending && _positions[r] < sinks; r++) rows.Add(r);
        int used = 0;
        foreach (int c in order)
        {
            if (used + _clusters[c].Rows.Count > budget) break;
            used += _clusters[c].Rows.Count;
            rows.AddRange(_clusters[c].Rows);
        }
        for (int r = _pending; r < Count; r++) rows.Add(r);
        var result = rows.ToArray();
        Array.Sort(result);
        return result;
    }

    /// <summary>Softmax attention of one query head over <paramref name="rows"/>, written to <paramref name="output"/>.</summary>
    public void Attend(ReadOnlySpan<float> query, int[] rows, Span<float> output)
    {
        float scale = 1 / MathF.Sqrt(_d);
        var logits = new float[rows.Length];
        for (int i = 0; i < rows.Length; i++) logits[i] = TensorPrimitives.Dot(query, Key(rows[i])) * scale;
        TensorPrimitives.SoftMax(logits, logits);
        output.Clear();
        for (int i = 0; i < rows.Length; i++) TensorPrimitives.MultiplyAdd(Value(rows[i]), logits[i], output, output);
    }

    /// <summary>The share of the softmax mass over every row that <paramref name="rows"/> (ascending) receive.</summary>
    public double Recall(ReadOnlySpan<float> query, int[] rows)
    {
        float scale = 1 / MathF.Sqrt(_d);
        var logits = new double[Count];
        double max = double.NegativeInfinity;
        for (int r = 0; r < Count; r++) max = Math.Max(max, logits[r] = TensorPrimitives.Dot(query, Key(r)) * scale);
        double all = 0, selected = 0;
        for (int r = 0, i = 0; r < Count; r++)
        {
            double e = Math.Exp(logits[r] - max);
            all += e;
            if (i < rows.Length && rows[i] == r) { selected += e; i++; }
        }
        return selected / all;
    }

    /// <summary>Frees the copy and the clusters.</summary>
    public void Clear()
    {
        _keys.Clear(); _keys.TrimExcess();
        _values.Clear(); _values.TrimExcess();
        _positions.Clear();
        _clusters.Clear();
        _pending = 0;
    }

    /// <summary>Drops rows at positions ≥ <paramref name="length"/> (from their clusters too; emptied clusters go).</summary>
    public void Truncate(int length)
    {
        int keep = 0;
        while (keep < Count && _positions[keep] < length) keep++;
        if (keep == Count) return;
        _positions.RemoveRange(keep, Count - keep);
        _keys.RemoveRange(keep * _d, _keys.Count - keep * _d);
        _values.RemoveRange(keep * _d, _values.Count - keep * _d);
        foreach (var c in _clusters) c.Rows.RemoveAll(r => r >= keep);
        _clusters.RemoveAll(c => c.Rows.Count == 0);
        _pending = Math.Min(_pending, keep);
    }
}
