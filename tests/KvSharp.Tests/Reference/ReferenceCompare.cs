namespace KvSharp.Tests.Reference;

/// <summary>Helpers to compare engine logits (float) with the oracle's (double).</summary>
public static class ReferenceCompare
{
    /// <summary>max_i |actual_i - expected_i| / max(1, max_i |expected_i|): an error scale-free in the logits' size.</summary>
    public static double MaxRelativeError(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual)
    {
        if (expected.Length != actual.Length) throw new ArgumentException($"lengths differ: expected {expected.Length}, actual {actual.Length}");
        double scale = 1, err = 0;
        foreach (var e in expected) scale = Math.Max(scale, Math.Abs(e));
        for (int i = 0; i < expected.Length; i++) err = Math.Max(err, Math.Abs(actual[i] - expected[i]));
        return err / scale;
    }

    /// <summary>
    /// Asserts every position's logits agree within <paramref name="tol"/> (see <see cref="MaxRelativeError"/>) and
    /// have the same argmax unless the oracle's top two are within the tolerance (a near-tie either side may pick).
    /// </summary>
    public static void AssertLogitsClose(double[][] expected, IReadOnlyList<float[]> actual, double tol)
    {
        Assert.Equal(expected.Length, actual.Count);
        for (int t = 0; t < expected.Length; t++)
        {
            double err = MaxRelativeError(expected[t], actual[t]);
            Assert.True(err <= tol, $"position {t}: relative logit error {err:E2} > {tol:E2}");
            int e = ArgMax(expected[t]), a = ArgMax(actual[t].Select(v => (double)v).ToArray());
            if (e != a)
                Assert.True(expected[t][e] - expected[t][a] <= tol * Math.Max(1, Math.Abs(expected[t][e])),
                    $"position {t}: engine argmax {a}, oracle argmax {e} ({expected[t][e]:R} vs {expected[t][a]:R})");
        }
    }

    /// <summary>Index of the largest value (the first on ties).</summary>
    public static int ArgMax(double[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
