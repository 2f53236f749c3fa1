namespace KvSharp.Models.Loading;

/// <summary>
/// Conversions between <see cref="Llama3RopeScaling"/> parameters and the per-frequency divisors
/// llama.cpp stores as <c>rope_freqs.weight</c> (frequency_i is divided by divisor_i).
/// </summary>
public static class Llama3Scaling
{
    /// <summary>The divisor of each of the head's <paramref name="headDim"/>/2 frequencies under <paramref name="s"/>.</summary>
    public static double[] Factors(Llama3RopeScaling s, double theta, int headDim)
    {
        var r = new double[headDim / 2];
        double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
        double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
        for (int i = 0; i < r.Length; i++)
        {
            double wavelen = 2 * Math.PI * Math.Pow(theta, 2.0 * i / headDim);
            if (wavelen < highWavelen) r[i] = 1;
            else if (wavelen > lowWavelen) r[i] = s.Factor;
            else
            {
                double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                r[i] = 1 / ((1 - smooth) / s.Factor + smooth);
            }
        }
        return r;
    }

    /// <summary>
    /// Recovers the parameters that produce <paramref name="divisors"/>, or null when none do
    /// (within 1e-3 relative). Only the ratios original/low and original/high are determined by
    /// the divisors, so <paramref name="originalMaxPositions"/> fixes the scale; null is also
    /// returned for all-ones divisors (no scaling).
    /// </summary>
    public static Llama3RopeScaling? FromFactors(double[] divisors, double theta, int headDim, int originalMaxPositions)
    {
        double factor = divisors.Max();
        if (factor <= 1 + 1e-6) return null;
        // In the transition band, 1/divisor = (1-smooth)/factor + smooth with smooth linear in 1/wavelen:
        // smooth = L/(high-low) * (1/wavelen) - low/(high-low). Fit that line by least squares.
        var xs = new List<double>();
        var ys = new List<double>();
        for (int i = 0; i < divisors.Length; i++)
        {
            double r = divisors[i];
            if (r > 1 + 1e-4 && r < factor * (1 - 1e-4))
            {
                xs.Add(1 / (2 * Math.PI * Math.Pow(theta, 2.0 * i / headDim)));
                ys.Add((1 / r - 1 / factor) / (1 - 1 / factor));
            }
        }
        Llama3RopeScaling candidate;
        if (xs.Count >= 2)
        {
            double mx = xs.Average(), my = ys.Average(), sxy = 0, sxx = 0;
            for (int i = 0; i < xs.Count; i++) { sxy += (xs[i] - mx) * (ys[i] - my); sxx += (xs[i] - mx) * (xs[i] - mx); }
            double a = sxy / sxx, b = my - a * mx;
            double width = originalMaxPositions / a;
            double low = -b * width;
            candidate = new Llama3RopeScaling(Math.Round(factor, 4), Math.Round(low, 4), Math.Round(low + width, 4), originalMaxPositions);
        }
        else
        {
            // Too few transition frequencies to fit: Meta's published defaults are the only sensible guess.
            candidate = new Llama3RopeScaling(Math.Round(factor, 4), 1, 4, originalMaxPositions);
        }
        var check = Factors(candidate, theta, headDim);
        for (int i = 0; i < divisors.Length; i++)
            if (Math.Abs(check[i] - divisors[i]) > 1e-3 * divisors[i]) return null;
        return candidate;
    }
}
