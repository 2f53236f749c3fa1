using System.Numerics.Tensors;

namespace KvSharp.Compression.Recall;

/// <summary>
/// Spherical (cosine) k-means, deterministic: rows are unit-normalized; the k initial centroids are the rows at
/// ⌊i·n/k⌋; each iteration assigns every row to the centroid of highest dot product (ties: the lower index) and
/// replaces each centroid by the normalized sum of its rows (an empty cluster keeps its centroid); a final assignment
/// matches the members to the last centroids.
/// </summary>
internal static class CosineKMeans
{
    /// <summary>Clusters the [n, d] <paramref name="rows"/>; returns k unit centroids [k, d] and each row's cluster.</summary>
    public static (float[] Centroids, int[] Assignment) Cluster(ReadOnlySpan<float> rows, int d, int k, int iterations)
    {
        int n = rows.Length / d;
        if (n == 0) return ([], []);
        k = Math.Clamp(k, 1, n);
        var unit = new float[n * d];
        for (int i = 0; i < n; i++) Normalize(rows.Slice(i * d, d), unit.AsSpan(i * d, d));
        var centroids = new float[k * d];
        for (int c = 0; c < k; c++) unit.AsSpan((int)((long)c * n / k) * d, d).CopyTo(centroids.AsSpan(c * d, d));
        var assignment = new int[n];
        var sums = new float[k * d];
        var counts = new int[k];
        for (int it = 0; it < iterations; it++)
        {
            Assign(unit, centroids, d, assignment);
            Array.Clear(sums);
            Array.Clear(counts);
            for (int i = 0; i < n; i++)
            {
                TensorPrimitives.Add(sums.AsSpan(assignment[i] * d, d), unit.AsSpan(i * d, d), sums.AsSpan(assignment[i] * d, d));
                counts[assignment[i]]++;
            }
            for (int c = 0; c < k; c++)
                if (counts[c] > 0) Normalize(sums.AsSpan(c * d, d), centroids.AsSpan(c * d, d));
        }
        Assign(unit, centroids, d, assignment);
        return (centroids, assignment);
    }

    private static void Assign(float[] unit, float[] centroids, int d, int[] assignment)
    {
        int k = centroids.Length / d;
        Compute.Cpu.CpuThreads.For(assignment.Length, 64, (from, to) =>
        {
            for (int i = from; i < to; i++)
            {
                var x = unit.AsSpan(i * d, d);
                int best = 0;
                float bestDot = float.NegativeInfinity;
                for (int c = 0; c < k; c++)
                {
                    float dot = TensorPrimitives.Dot(x, centroids.AsSpan(c * d, d));
                    if (dot > bestDot) { bestDot = dot; best = c; }
                }
                assignment[i] = best;
            }
        });
    }

    private static void Normalize(ReadOnlySpan<float> x, Span<float> into)
    {
        float norm = TensorPrimitives.Norm(x);
        if (norm > 0) TensorPrimitives.Divide(x, norm, into);
        else into.Clear();
    }
}
