namespace KvSharp.Cache.Blocks;

/// <summary>
/// The orthonormal real Fourier basis of R^n that VidKV keys are coded in: the real and imaginary parts of the DFT's
/// non-redundant half spectrum, each scaled to unit norm. Row j, as a function of the token t = 0..n−1:
/// φ₀ = 1/√n; for k = 1..⌊(n−1)/2⌋, φ_{2k−1} = √(2/n)·cos(2πkt/n) and φ_{2k} = √(2/n)·sin(2πkt/n); for even n,
/// φ_{n−1} = (−1)^t/√n. Coefficients y_j = Σ_t φ_j(t)·x_t; the inverse is x_t = Σ_j φ_j(t)·y_j.
/// </summary>
/// <remarks>
/// Blocks hold at most <see cref="BlockLayout.VidKvMaxTokens"/> tokens, so the transform is a dense n×n product with a
/// tabulated basis (one table per length, built on first use): at n = 32 that is 1024 multiply-adds per channel,
/// less work than an FFT's setup and exact to the table's rounding for every length (a partial block has its own n).
/// </remarks>
internal static class RealFourierBasis
{
    private static readonly double[]?[] Doubles = new double[BlockLayout.VidKvMaxTokens + 1][];
    private static readonly float[]?[] Floats = new float[BlockLayout.VidKvMaxTokens + 1][];
    private static readonly float[]?[] Transposed = new float[BlockLayout.VidKvMaxTokens + 1][];

    /// <summary>The basis of length <paramref name="n"/> as [n, n] doubles, row j = φ_j(0..n−1).</summary>
    public static double[] Double(int n) => Doubles[n] ??= Build(n);

    /// <summary>The same basis rounded to float32 (what the attention kernels use).</summary>
    public static float[] Single(int n) => Floats[n] ??= Array.ConvertAll(Double(n), x => (float)x);

    /// <summary>
    /// The float32 basis transposed, [n, n] with row t = φ_0..n−1(t): the inverse transform x_t = Σ_j φ_j(t)·y_j is then
    /// a row-times-vector product per token, as the attention kernels compute scores.
    /// </summary>
    public static float[] SingleTransposed(int n)
    {
        if (Transposed[n] is { } t) return t;
        var b = Single(n);
        var r = new float[n * n];
        for (int j = 0; j < n; j++)
            for (int x = 0; x < n; x++) r[x * n + j] = b[j * n + x];
        return Transposed[n] = r;
    }

    private static double[] Build(int n)
    {
        var b = new double[n * n];
        double dc = 1 / Math.Sqrt(n), ac = Math.Sqrt(2.0 / n);
        for (int t = 0; t < n; t++)
        {
            b[t] = dc;
            for (int k = 1; 2 * k < n; k++)
            {
                // (k·t) mod n keeps the angle in [0, 2π): cos/sin of large arguments lose digits.
                double angle = 2 * Math.PI * ((long)k * t % n) / n;
                b[(2 * k - 1) * n + t] = ac * Math.Cos(angle);
                b[2 * k * n + t] = ac * Math.Sin(angle);
            }
            if (n % 2 == 0) b[(n - 1) * n + t] = t % 2 == 0 ? dc : -dc;
        }
        return b;
    }
}
