using System.Numerics;
using KvSharp.Cache.Blocks;

namespace KvSharp.Tests.Cache.Blocks;

/// <summary>
/// A float64 reference of the VidKV block formats written from their definition (docs/quantization.md), independent of
/// the codec: the DFT through System.Numerics.Complex sums, selections by sorting, the bytes laid out area by area.
/// </summary>
internal static class VidKvReference
{
    /// <summary>Orthonormal real-DFT coefficients y_0..y_{n-1} of x (from the complex DFT X_k = Σ x_t e^{-2πikt/n}).</summary>
    public static double[] Forward(ReadOnlySpan<double> x)
    {
        int n = x.Length;
        var y = new double[n];
        for (int k = 0; 2 * k <= n; k++)
        {
            var X = Complex.Zero;
            for (int t = 0; t < n; t++) X += x[t] * Complex.Exp(new Complex(0, -2 * Math.PI * k * t / n));
            if (k == 0) y[0] = X.Real / Math.Sqrt(n);
            else if (2 * k == n) y[n - 1] = X.Real / Math.Sqrt(n);
            else { y[2 * k - 1] = X.Real * Math.Sqrt(2.0 / n); y[2 * k] = -X.Imaginary * Math.Sqrt(2.0 / n); }
        }
        return y;
    }

    /// <summary>The inverse: x_t from coefficients, again through complex exponentials (X_{n-k} = conj X_k).</summary>
    public static double[] Inverse(ReadOnlySpan<double> y)
    {
        int n = y.Length;
        var X = new Complex[n];
        X[0] = y[0] * Math.Sqrt(n);
        for (int k = 1; 2 * k < n; k++)
        {
            X[k] = new Complex(y[2 * k - 1], -y[2 * k]) / Math.Sqrt(2.0 / n);
            X[n - k] = Complex.Conjugate(X[k]);
        }
        if (n % 2 == 0 && n > 1) X[n / 2] = y[n - 1] * Math.Sqrt(n);
        var x = new double[n];
        for (int t = 0; t < n; t++)
        {
            var s = Complex.Zero;
            for (int k = 0; k < n; k++) s += X[k] * Complex.Exp(new Complex(0, 2 * Math.PI * k * t / n));
            x[t] = s.Real / n;
        }
        return x;
    }

    public static double F16(double x) => (double)(Half)Math.Clamp(x, -65504, 65504);

    private static ushort Bits(double x) => BitConverter.HalfToUInt16Bits((Half)Math.Clamp(x, -65504, 65504));

    /// <summary>Expected bytes and float64 reconstruction of a VidKvKey block of n tokens.</summary>
    public static (byte[] Bytes, double[] Decoded, bool[] Outlier) Keys(int tokens, int d, int m, float[] x, int n)
    {
        var outlier = new bool[d];
        var range = Enumerable.Range(0, d).Select(c => Enumerable.Range(0, n).Max(t => (double)x[t * d + c]) - Enumerable.Range(0, n).Min(t => (double)x[t * d + c])).ToArray();
        foreach (int c in Enumerable.Range(0, d).OrderBy(c => -range[c]).ThenBy(c => c).Take(m)) outlier[c] = true;
        int normal = d - m;
        var mask = new byte[d / 8];
        var oCodes = new int[tokens * m];
        var nBits = new int[tokens * normal];
        var oScale = new ushort[m]; var oMin = new ushort[m]; var nScale = new ushort[normal]; var nMean = new ushort[normal];
        var decoded = new double[n * d];
        int ko = 0, kn = 0;
        for (int c = 0; c < d; c++)
        {
            var col = Enumerable.Range(0, n).Select(t => (double)x[t * d + c]).ToArray();
            if (outlier[c])
            {
                mask[c / 8] |= (byte)(1 << (c % 8));
                double lo = col.Min(), hi = col.Max();
                oScale[ko] = Bits((hi - lo) / 3); oMin[ko] = Bits(lo);
                double s = F16((hi - lo) / 3), mn = F16(lo);
                for (int t = 0; t < n; t++)
                {
                    int q = s > 0 ? (int)Math.Clamp(Math.Round((col[t] - mn) / s, MidpointRounding.ToEven), 0, 3) : 0;
                    oCodes[t * m + ko] = q;
                    decoded[t * d + c] = mn + q * s;
                }
                ko++;
            }
            else
            {
                var y = Forward(col);
                nMean[kn] = Bits(col.Average());
                double scale = n > 1 ? y.Skip(1).Sum(Math.Abs) / (n - 1) : 0;
                nScale[kn] = Bits(scale);
                var signs = new double[n];
                for (int j = 1; j < n; j++)
                {
                    signs[j] = y[j] >= 0 ? 1 : -1;
                    nBits[j * normal + kn] = y[j] >= 0 ? 1 : 0;
                }
                var ac = Inverse(signs.Select(sg => sg * F16(scale)).ToArray());
                for (int t = 0; t < n; t++) decoded[t * d + c] = F16(col.Average()) + ac[t];
                kn++;
            }
        }
        var bytes = new List<byte>(mask);
        bytes.AddRange(Pack(oCodes, 2));
        bytes.AddRange(Pack(nBits, 1));
        foreach (var h in oScale.Concat(oMin).Concat(nScale).Concat(nMean)) { bytes.Add((byte)h); bytes.Add((byte)(h >> 8)); }
        return (bytes.ToArray(), decoded, outlier);
    }

    /// <summary>Expected bytes and float64 reconstruction of a VidKvValue block of n tokens.</summary>
    public static (byte[] Bytes, double[] Decoded, bool[] Salient) Values(int tokens, int d, int s, float[] x, int n)
    {
        int sn = Math.Min(s, n);
        var a = Enumerable.Range(0, d).Select(c => Enumerable.Range(0, n).Sum(t => Math.Abs((double)x[t * d + c])) / n).ToArray();
        var err = Enumerable.Range(0, n).Select(t => Enumerable.Range(0, d).Sum(c =>
        {
            double v = x[t * d + c], r = a[c] > 0 ? a[c] * Math.Clamp(Math.Round(v / a[c], MidpointRounding.ToEven), -1, 1) : 0;
            return (v - r) * (v - r);
        })).ToArray();
        var salient = new bool[n];
        foreach (int t in Enumerable.Range(0, n).OrderBy(t => -err[t]).ThenBy(t => t).Take(sn)) salient[t] = true;

        var mask = new byte[(tokens + 7) / 8];
        var digits = new int[tokens * d];
        var rowCodes = new int[s * d];
        var chScale = new ushort[d]; var rowScale = new ushort[s]; var rowMin = new ushort[s];
        var decoded = new double[n * d];
        for (int c = 0; c < d; c++)
        {
            var ordinary = Enumerable.Range(0, n).Where(t => !salient[t]).ToArray();
            double scale = ordinary.Length > 0 ? ordinary.Sum(t => Math.Abs((double)x[t * d + c])) / ordinary.Length : 0;
            chScale[c] = Bits(scale);
            double s16 = F16(scale);
            for (int t = 0; t < n; t++)
            {
                int trit = salient[t] || !(s16 > 0) ? 0 : (int)Math.Clamp(Math.Round(x[t * d + c] / s16, MidpointRounding.ToEven), -1, 1);
                digits[t * d + c] = trit + 1;
                decoded[t * d + c] = trit * s16;
            }
        }
        int slot = 0;
        for (int t = 0; t < n; t++)
        {
            if (!salient[t]) continue;
            mask[t / 8] |= (byte)(1 << (t % 8));
            var row = Enumerable.Range(0, d).Select(c => (double)x[t * d + c]).ToArray();
            double lo = row.Min(), hi = row.Max();
            rowScale[slot] = Bits((hi - lo) / 15); rowMin[slot] = Bits(lo);
            double sc = F16((hi - lo) / 15), mn = F16(lo);
            for (int c = 0; c < d; c++)
            {
                int q = sc > 0 ? (int)Math.Clamp(Math.Round((row[c] - mn) / sc, MidpointRounding.ToEven), 0, 15) : 0;
                rowCodes[slot * d + c] = q;
                decoded[t * d + c] = mn + q * sc;
            }
            slot++;
        }
        var bytes = new List<byte>(mask);
        var trits = new byte[(tokens * d + 4) / 5];
        for (int e = 0; e < n * d; e++) trits[e / 5] += (byte)(digits[e] * (int)Math.Pow(3, e % 5));
        bytes.AddRange(trits);
        bytes.AddRange(Pack(rowCodes, 4));
        foreach (var h in chScale.Concat(rowScale).Concat(rowMin)) { bytes.Add((byte)h); bytes.Add((byte)(h >> 8)); }
        return (bytes.ToArray(), decoded, salient);
    }

    /// <summary>Codes of <paramref name="bits"/> bits packed LSB first.</summary>
    private static byte[] Pack(int[] codes, int bits)
    {
        var b = new byte[(codes.Length * bits + 7) / 8];
        for (int e = 0; e < codes.Length; e++) b[e * bits / 8] |= (byte)(codes[e] << (e * bits % 8));
        return b;
    }
}
