namespace KvSharp.GpuTests.Checks;

/// <summary>The checks' float64 attention, written independently of the kernels.</summary>
public static class ReferenceAttention
{
    /// <summary>
    /// softmax(q·kⱼ / √hd) · V of one query head over key/value rows j &lt; <paramref name="visible"/> into
    /// <paramref name="output"/> [hd]; <paramref name="key"/>(j, d) and <paramref name="value"/>(j, d) give element d of row j.
    /// </summary>
    public static void Head(ReadOnlySpan<float> q, int visible, Func<int, int, double> key, Func<int, int, double> value, Span<double> output)
    {
        int hd = output.Length;
        var s = new double[visible];
        double max = double.NegativeInfinity;
        for (int j = 0; j < visible; j++)
        {
            double dot = 0;
            for (int d = 0; d < hd; d++) dot += q[d] * key(j, d);
            s[j] = dot / Math.Sqrt(hd);
            max = Math.Max(max, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < visible; j++) { s[j] = Math.Exp(s[j] - max); sum += s[j]; }
        for (int d = 0; d < hd; d++)
        {
            double acc = 0;
            for (int j = 0; j < visible; j++) acc += s[j] * value(j, d);
            output[d] = acc / sum;
        }
    }
}
