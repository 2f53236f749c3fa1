using System.Buffers.Binary;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// Encoding and decoding of VidKV blocks (<see cref="KvFormat.VidKvKey"/>, <see cref="KvFormat.VidKvValue"/>; bytes in
/// <see cref="VidKvLayout"/>). Statistics are float64 and every reconstruction uses the stored (f16-rounded)
/// parameters, as in <see cref="BlockCodec"/>. A block is encoded whole: its outlier channels, salient tokens, means
/// and DFT length depend on all its n present tokens (n = the block's token count, also for partial blocks).
/// </summary>
/// <remarks>
/// Keys, per block: the m channels with the largest range max_t x − min_t x (ties: lower channel first) are outlier
/// channels, coded as <see cref="KvFormat.Int2"/> per channel (scale = range/3, q = clamp(rne((x − min₁₆)/scale₁₆), 0, 3)).
/// Every other channel c: mean = mean_t x (f16); y_j = Σ_t φ_j(t)·x_t for j = 1..n−1 (<see cref="RealFourierBasis"/>);
/// scale = mean_j |y_j| (f16; 0 when n = 1), the least-squares scale for the signs; s_j = +1 where y_j ≥ 0 else −1;
/// x̂_t = mean₁₆ + scale₁₆·Σ_{j≥1} φ_j(t)·s_j. The basis is orthonormal, so the error in tokens equals the error in
/// frequencies, and y_j (j ≥ 1) does not depend on the mean.
/// <para>Values, per block: S' = min(S, n) salient tokens are those with the largest squared ternary error
/// Σ_c (x_tc − a_c·clamp(rne(x_tc/a_c), −1, 1))² under a_c = mean_t |x_tc| over all n tokens (float64, ties: lower token
/// first); they are stored as <see cref="KvFormat.Int4"/> rows (scale = row range/15, min = row min). The other tokens
/// are ternary per channel: scale_c = mean |x_tc| over them (f16), t = clamp(rne(x/scale₁₆), −1, 1) (0 when scale₁₆ = 0).</para>
/// </remarks>
internal static class VidKvCodec
{
    /// <summary>The 5 base-3 digits (trit + 1) of every byte value 0..242 (bytes 243..255 never occur).</summary>
    public static readonly sbyte[] TritTable = BuildTritTable();

    public static void Encode(BlockLayout layout, ReadOnlySpan<float> src, int n, Span<byte> dst)
    {
        if (src.Length < n * layout.HeadDim) throw new ArgumentException($"{n} tokens of {layout.HeadDim} channels need {n * layout.HeadDim} floats, got {src.Length}", nameof(src));
        if (n == 0) return;
        if (layout.Format == KvFormat.VidKvKey) EncodeKeys(layout, src, n, dst);
        else EncodeValues(layout, src, n, dst);
    }

    public static void Decode(BlockLayout layout, ReadOnlySpan<byte> src, int n, Span<float> dst)
    {
        if (layout.Format == KvFormat.VidKvKey) DecodeKeys(layout, src, n, dst);
        else DecodeValues(layout, src, n, dst);
    }

    // ---- keys ----

    private static void EncodeKeys(BlockLayout layout, ReadOnlySpan<float> x, int n, Span<byte> dst)
    {
        int d = layout.HeadDim, m = layout.GroupSize, normal = d - m;
        var v = layout.Vid;
        var lo = new double[d];
        var hi = new double[d];
        for (int c = 0; c < d; c++)
        {
            lo[c] = double.PositiveInfinity; hi[c] = double.NegativeInfinity;
            for (int t = 0; t < n; t++) { lo[c] = Math.Min(lo[c], x[t * d + c]); hi[c] = Math.Max(hi[c], x[t * d + c]); }
        }
        var outlier = new bool[d];
        foreach (int c in Enumerable.Range(0, d).OrderByDescending(c => hi[c] - lo[c]).ThenBy(c => c).Take(m)) outlier[c] = true;
        for (int c = 0; c < d; c++)
            if (outlier[c]) dst[c >> 3] |= (byte)(1 << (c & 7));

        var basis = RealFourierBasis.Double(n);
        var p = dst[v.ParameterOffset..];
        int ko = 0, kn = 0;
        for (int c = 0; c < d; c++)
        {
            if (outlier[c])
            {
                ushort sb = ScalarFormats.ToF16Saturated((hi[c] - lo[c]) / 3), mb = ScalarFormats.ToF16Saturated(lo[c]);
                WriteF16(p, ko, sb);
                WriteF16(p, m + ko, mb);
                double scale = ScalarFormats.FromF16(sb), min = ScalarFormats.FromF16(mb);
                for (int t = 0; t < n; t++)
                {
                    int q = scale > 0 ? (int)Math.Clamp(Math.Round((x[t * d + c] - min) / scale, MidpointRounding.ToEven), 0, 3) : 0;
                    SetBits(dst[v.FirstCodeOffset..], 2 * (t * m + ko), q);
                }
                ko++;
            }
            else
            {
                double sum = 0;
                for (int t = 0; t < n; t++) sum += x[t * d + c];
                WriteF16(p, 2 * m + normal + kn, ScalarFormats.ToF16Saturated(sum / n));
                double abs = 0;
                for (int j = 1; j < n; j++)
                {
                    double y = 0;
                    for (int t = 0; t < n; t++) y += basis[j * n + t] * x[t * d + c];
                    abs += Math.Abs(y);
                    if (y >= 0) SetBits(dst[v.SecondCodeOffset..], j * normal + kn, 1);
                }
                WriteF16(p, 2 * m + kn, ScalarFormats.ToF16Saturated(n > 1 ? abs / (n - 1) : 0));
                kn++;
            }
        }
    }

    private static void DecodeKeys(BlockLayout layout, ReadOnlySpan<byte> src, int n, Span<float> dst)
    {
        int d = layout.HeadDim, m = layout.GroupSize, normal = d - m;
        var v = layout.Vid;
        var p = src[v.ParameterOffset..];
        var basis = n > 0 ? RealFourierBasis.Double(n) : [];
        int ko = 0, kn = 0;
        for (int c = 0; c < d; c++)
        {
            if ((src[c >> 3] >> (c & 7) & 1) != 0)
            {
                float scale = ReadF16(p, ko), min = ReadF16(p, m + ko);
                for (int t = 0; t < n; t++) dst[t * d + c] = min + GetBits(src[v.FirstCodeOffset..], 2 * (t * m + ko), 2) * scale;
                ko++;
            }
            else
            {
                double scale = ReadF16(p, 2 * m + kn), mean = ReadF16(p, 2 * m + normal + kn);
                for (int t = 0; t < n; t++)
                {
                    double s = 0;
                    for (int j = 1; j < n; j++) s += basis[j * n + t] * (GetBits(src[v.SecondCodeOffset..], j * normal + kn, 1) * 2 - 1);
                    dst[t * d + c] = (float)(mean + scale * s);
                }
                kn++;
            }
        }
    }

    // ---- values ----

    private static void EncodeValues(BlockLayout layout, ReadOnlySpan<float> x, int n, Span<byte> dst)
    {
        int d = layout.HeadDim, salientCount = Math.Min(layout.GroupSize, n);
        var v = layout.Vid;
        var salient = new bool[n];
        if (salientCount > 0)
        {
            var a = new double[d];
            for (int c = 0; c < d; c++)
            {
                for (int t = 0; t < n; t++) a[c] += Math.Abs((double)x[t * d + c]);
                a[c] /= n;
            }
            var error = new double[n];
            for (int t = 0; t < n; t++)
                for (int c = 0; c < d; c++)
                {
                    double xc = x[t * d + c], r = a[c] > 0 ? a[c] * Math.Clamp(Math.Round(xc / a[c], MidpointRounding.ToEven), -1, 1) : 0;
                    error[t] += (xc - r) * (xc - r);
                }
            foreach (int t in Enumerable.Range(0, n).OrderByDescending(t => error[t]).ThenBy(t => t).Take(salientCount)) salient[t] = true;
        }
        var p = dst[v.ParameterOffset..];
        int slot = 0;
        for (int t = 0; t < n; t++)
        {
            if (!salient[t]) continue;
            dst[t >> 3] |= (byte)(1 << (t & 7));
            double lo = double.PositiveInfinity, hi = double.NegativeInfinity;
            for (int c = 0; c < d; c++) { lo = Math.Min(lo, x[t * d + c]); hi = Math.Max(hi, x[t * d + c]); }
            ushort sb = ScalarFormats.ToF16Saturated((hi - lo) / 15), mb = ScalarFormats.ToF16Saturated(lo);
            WriteF16(p, d + slot, sb);
            WriteF16(p, d + layout.GroupSize + slot, mb);
            double scale = ScalarFormats.FromF16(sb), min = ScalarFormats.FromF16(mb);
            var codes = dst.Slice(v.SecondCodeOffset + slot * d / 2, d / 2);
            for (int c = 0; c < d; c++)
            {
                int q = scale > 0 ? (int)Math.Clamp(Math.Round((x[t * d + c] - min) / scale, MidpointRounding.ToEven), 0, 15) : 0;
                codes[c >> 1] |= (byte)(q << (4 * (c & 1)));
            }
            slot++;
        }
        var trits = dst[v.FirstCodeOffset..];
        for (int c = 0; c < d; c++)
        {
            double sum = 0;
            for (int t = 0; t < n; t++) if (!salient[t]) sum += Math.Abs((double)x[t * d + c]);
            ushort sb = ScalarFormats.ToF16Saturated(n > salientCount ? sum / (n - salientCount) : 0);
            WriteF16(p, c, sb);
            double scale = ScalarFormats.FromF16(sb);
            for (int t = 0; t < n; t++)
            {
                int trit = salient[t] || !(scale > 0) ? 0 : (int)Math.Clamp(Math.Round(x[t * d + c] / scale, MidpointRounding.ToEven), -1, 1);
                int e = t * d + c;
                trits[e / 5] += (byte)((trit + 1) * Pow3[e % 5]);
            }
        }
    }

    private static readonly int[] Pow3 = [1, 3, 9, 27, 81];

    private static void DecodeValues(BlockLayout layout, ReadOnlySpan<byte> src, int n, Span<float> dst)
    {
        int d = layout.HeadDim;
        var v = layout.Vid;
        var p = src[v.ParameterOffset..];
        var trits = src[v.FirstCodeOffset..];
        int slot = 0;
        for (int t = 0; t < n; t++)
        {
            var row = dst.Slice(t * d, d);
            if ((src[t >> 3] >> (t & 7) & 1) != 0)
            {
                float scale = ReadF16(p, d + slot), min = ReadF16(p, d + layout.GroupSize + slot);
                var codes = src.Slice(v.SecondCodeOffset + slot * d / 2, d / 2);
                for (int c = 0; c < d; c++) row[c] = min + (codes[c >> 1] >> (4 * (c & 1)) & 15) * scale;
                slot++;
                continue;
            }
            for (int c = 0; c < d; c++)
            {
                int e = t * d + c;
                row[c] = TritTable[5 * trits[e / 5] + e % 5] * ReadF16(p, c);
            }
        }
    }

    // ---- bits and parameters ----

    /// <summary>f16 parameter <paramref name="index"/> of the parameter area <paramref name="p"/>, as float.</summary>
    public static float ReadF16(ReadOnlySpan<byte> p, int index) => ScalarFormats.FromF16(BinaryPrimitives.ReadUInt16LittleEndian(p[(2 * index)..]));

    private static void WriteF16(Span<byte> p, int index, ushort bits) => BinaryPrimitives.WriteUInt16LittleEndian(p[(2 * index)..], bits);

    /// <summary>ORs <paramref name="value"/> in at bit <paramref name="bit"/> (codes of 1 or 2 bits never straddle a byte).</summary>
    private static void SetBits(Span<byte> area, int bit, int value) => area[bit >> 3] |= (byte)(value << (bit & 7));

    /// <summary>The <paramref name="width"/>-bit code at bit <paramref name="bit"/>.</summary>
    public static int GetBits(ReadOnlySpan<byte> area, int bit, int width) => area[bit >> 3] >> (bit & 7) & ((1 << width) - 1);

    private static sbyte[] BuildTritTable()
    {
        var table = new sbyte[5 * 256];
        for (int b = 0; b < 243; b++)
            for (int i = 0, r = b; i < 5; i++, r /= 3) table[5 * b + i] = (sbyte)(r % 3 - 1);
        return table;
    }
}
