namespace KvSharp.Tests.Compression.Quantization;

/// <summary>
/// Float64 reference of the asymmetric uniform quantizer the presses store with (METHODS.md C): per group
/// s = (max − min)/(2^b − 1), q = clamp(round((x − min)/s)), x̂ = min + q·s, with min and s rounded to f16 as stored.
/// </summary>
internal static class QuantReference
{
    public static double[] Group(IReadOnlyList<double> x, int bits)
    {
        int qmax = (1 << bits) - 1;
        double lo = x.Min(), hi = x.Max();
        double scale = (double)(Half)((hi - lo) / qmax), min = (double)(Half)lo;
        return x.Select(v => scale > 0 ? min + Math.Clamp(Math.Round((v - min) / scale, MidpointRounding.ToEven), 0, qmax) * scale : min).ToArray();
    }

    /// <summary>Keys [tokens, d] quantized per channel over consecutive groups of <paramref name="group"/> tokens.</summary>
    public static double[] PerChannel(float[] rows, int tokens, int d, int group, int bits)
    {
        var r = new double[tokens * d];
        for (int t0 = 0; t0 < tokens; t0 += group)
            for (int c = 0; c < d; c++)
            {
                int n = Math.Min(group, tokens - t0);
                var q = Group(Enumerable.Range(t0, n).Select(t => (double)rows[t * d + c]).ToArray(), bits);
                for (int i = 0; i < n; i++) r[(t0 + i) * d + c] = q[i];
            }
        return r;
    }

    /// <summary>Values [tokens, d] quantized per token over groups of <paramref name="group"/> channels.</summary>
    public static double[] PerToken(float[] rows, int tokens, int d, int group, int bits)
    {
        var r = new double[tokens * d];
        for (int t = 0; t < tokens; t++)
            for (int c0 = 0; c0 < d; c0 += group)
            {
                var q = Group(Enumerable.Range(c0, group).Select(c => (double)rows[t * d + c]).ToArray(), bits);
                for (int i = 0; i < group; i++) r[t * d + c0 + i] = q[i];
            }
        return r;
    }

    public static void Near(double expected, float actual, string what)
    {
        if (Math.Abs(expected - actual) > 1e-5 * (1 + Math.Abs(expected)))
            throw new Xunit.Sdk.XunitException($"{what}: expected {expected}, got {actual}");
    }
}
