namespace KvSharp.Compression.Sharing;

/// <summary>One pair the search tried: its distance, the similarity measured with it added, and whether it was kept.</summary>
public sealed record KvSharerTrial(LayerShare Share, double Distance, double Similarity, bool Accepted);

/// <summary>What the search found: the accepted shares (in order) and every pair it tried.</summary>
public sealed record KvSharerSearchResult(IReadOnlyList<LayerShare> Shares, IReadOnlyList<KvSharerTrial> Trials);

/// <summary>
/// KVSharer's greedy search, independent of any model: given each layer's averaged KV cache (one vector per layer)
/// and a similarity of the model's output with a set of shares to the unshared output, it ranks the pairs (i &gt; j)
/// by the Euclidean distance of their averaged caches, MOST dissimilar first (ties: higher i, then lower j), and for
/// each pair lets layer i reuse layer j's cache, keeping the share only when the similarity with it stays ≥ the
/// threshold, until <c>maxShared</c> layers share. A pair is skipped when i already shares, when i is the source
/// of a kept share, or when j itself shares (it stores nothing).
/// </summary>
public static class KvSharerSearch
{
    /// <summary>Runs the search; <paramref name="progress"/> gets the fraction of pairs considered.</summary>
    public static KvSharerSearchResult Run(IReadOnlyList<double[]> layerMeans, Func<IReadOnlyList<LayerShare>, double> similarity,
        double threshold, int maxShared, IProgress<double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(layerMeans);
        ArgumentNullException.ThrowIfNull(similarity);
        ArgumentOutOfRangeException.ThrowIfNegative(maxShared);
        int layers = layerMeans.Count;
        var pairs = new List<(LayerShare Share, double Distance)>();
        for (int i = 1; i < layers; i++)
            for (int j = 0; j < i; j++)
                pairs.Add((new LayerShare(i, j), Distance(layerMeans[i], layerMeans[j])));
        pairs.Sort((a, b) => b.Distance != a.Distance ? b.Distance.CompareTo(a.Distance)
            : a.Share.Layer != b.Share.Layer ? b.Share.Layer.CompareTo(a.Share.Layer) : a.Share.Source.CompareTo(b.Share.Source));
        var accepted = new List<LayerShare>();
        var trials = new List<KvSharerTrial>();
        for (int p = 0; p < pairs.Count && accepted.Count < maxShared; p++)
        {
            var (share, distance) = pairs[p];
            bool blocked = accepted.Any(a => a.Layer == share.Layer || a.Source == share.Layer || a.Layer == share.Source);
            if (!blocked)
            {
                double s = similarity([.. accepted, share]);
                bool keep = s >= threshold;
                trials.Add(new KvSharerTrial(share, distance, s, keep));
                if (keep) accepted.Add(share);
            }
            progress?.Report((p + 1.0) / pairs.Count);
        }
        progress?.Report(1);
        return new KvSharerSearchResult(accepted, trials);
    }

    private static double Distance(double[] a, double[] b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"layer means of {a.Length} and {b.Length} elements");
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += (a[i] - b[i]) * (a[i] - b[i]);
        return Math.Sqrt(s);
    }
}
