namespace KvSharp.Compression.Calibration;

/// <summary>The cosine similarity the calibrations compare vectors with (BaKlaVa's head importance, KVSharer's acceptance test).</summary>
public static class VectorSimilarity
{
    /// <summary>
    /// cos(a, b) = a·b / (‖a‖ ‖b‖), accumulated in float64. Two zero vectors are identical (1); a zero vector and a
    /// non-zero one are unrelated (0).
    /// </summary>
    public static double Cosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"vectors of {a.Length} and {b.Length} elements");
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.Length; i++)
        {
            double x = a[i], y = b[i];
            ab += x * y; aa += x * x; bb += y * y;
        }
        return aa == 0 || bb == 0 ? (aa == bb ? 1 : 0) : ab / Math.Sqrt(aa * bb);
    }
}
