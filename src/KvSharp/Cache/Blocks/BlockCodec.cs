using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// Converts token rows to and from the byte form of one KV block (<see cref="BlockLayout"/> documents
/// the bytes). Encoding happens once per block, so it is plain scalar code with float64 statistics;
/// attention never calls <see cref="Decode"/> (it reads blocks through <see cref="BlockAttention"/>).
/// </summary>
/// <remarks>
/// Quantization rules, per group, using the f16-rounded stored parameters so that encoder and readers agree:
/// <list type="bullet">
/// <item>Int8/4/2: min = min x, scale = (max x − min x) / (2^b − 1); q = clamp(round_even((x − min₁₆) / scale₁₆), 0, 2^b − 1)
/// (q = 0 when scale₁₆ = 0); x̂ = min₁₆ + q·scale₁₆.</item>
/// <item>Ternary: scale = mean |x|; t = clamp(round_even(x / scale₁₆), −1, 1) (0 when scale₁₆ = 0); x̂ = t·scale₁₆.</item>
/// <item>Binary: mean = mean x; scale = mean |x − mean₁₆|; s = +1 where x ≥ mean₁₆ else −1; x̂ = mean₁₆ + s·scale₁₆.</item>
/// <item>VidKV keys and values: see <see cref="KvFormat.VidKvKey"/>, <see cref="KvFormat.VidKvValue"/> and docs/quantization.md.</item>
/// </list>
/// A partially filled block (tokenCount &lt; Tokens) computes its statistics over the present tokens only;
/// absent rows and groups are stored as zero bytes.
/// </remarks>
public static class BlockCodec
{
    /// <summary>
    /// Encodes <paramref name="tokenCount"/> rows of <paramref name="src"/> ([tokenCount, HeadDim] floats)
    /// into <paramref name="dst"/> (at least <see cref="BlockLayout.ByteSize"/> bytes, all of which are written).
    /// </summary>
    public static void Encode(BlockLayout layout, ReadOnlySpan<float> src, int tokenCount, Span<byte> dst)
    {
        layout.CheckBlock(dst.Length, tokenCount, "destination");
        dst[..layout.ByteSize].Clear();
        if (layout.Format.IsVidKv()) VidKvCodec.Encode(layout, src, tokenCount, dst);
        else EncodeRowsUnchecked(layout, src, 0, tokenCount, dst);
    }

    /// <summary>
    /// Appends <paramref name="count"/> rows (<paramref name="rows"/>: [count, HeadDim] floats) at token
    /// <paramref name="firstToken"/> of a block whose earlier rows are already encoded, leaving those rows untouched.
    /// Rows are independent in float formats and per-token layouts; a per-channel layout shares parameters across
    /// each group of GroupSize tokens, so there <paramref name="firstToken"/> must start a group (the last group
    /// written may be partial, and is then final: re-encode the block to add to it).
    /// VidKV blocks are encoded whole (their outlier channels, salient tokens and DFT length depend on every token):
    /// only <paramref name="firstToken"/> = 0 is accepted, and it encodes the block as <see cref="Encode"/> does.
    /// </summary>
    /// <exception cref="KvSharpException">A per-channel append that does not start a token group, or an append to a VidKV block.</exception>
    public static void EncodeRows(BlockLayout layout, ReadOnlySpan<float> rows, int firstToken, int count, Span<byte> dst)
    {
        if (firstToken < 0 || count < 0) throw new ArgumentOutOfRangeException(nameof(firstToken), $"rows {firstToken}+{count}");
        layout.CheckBlock(dst.Length, firstToken + count, "destination");
        if (layout.Format.IsVidKv())
        {
            if (firstToken != 0) throw new KvSharpException($"cannot append at token {firstToken} of a {layout} block: VidKV blocks are encoded whole");
            Encode(layout, rows, count, dst);
            return;
        }
        if (layout.Format.IsQuantized() && layout.Axis == QuantAxis.PerChannel && firstToken % layout.GroupSize != 0)
            throw new KvSharpException($"cannot append at token {firstToken} of a per-channel {layout} block: appends must start a group of {layout.GroupSize} tokens");
        int d = layout.HeadDim, bits = layout.Format.BitsPerElement();
        dst.Slice(firstToken * d * bits / 8, count * d * bits / 8).Clear(); // codes are OR-ed in below
        EncodeRowsUnchecked(layout, rows, firstToken, count, dst);
    }

    private static void EncodeRowsUnchecked(BlockLayout layout, ReadOnlySpan<float> rows, int firstToken, int count, Span<byte> dst)
    {
        int d = layout.HeadDim, n = count * d, e0 = firstToken * d;
        if (rows.Length < n) throw new ArgumentException($"{count} tokens of {d} channels need {n} floats, got {rows.Length}", nameof(rows));
        switch (layout.Format)
        {
            case KvFormat.F32:
                if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("KV blocks assume a little-endian CPU");
                MemoryMarshal.AsBytes(rows[..n]).CopyTo(dst[(4 * e0)..]);
                return;
            case KvFormat.F16:
                for (int e = 0; e < n; e++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * (e0 + e))..], BitConverter.HalfToUInt16Bits((Half)rows[e]));
                return;
            case KvFormat.BF16:
                for (int e = 0; e < n; e++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * (e0 + e))..], ScalarFormats.ToBf16(rows[e]));
                return;
            case KvFormat.Fp8E4M3:
                for (int e = 0; e < n; e++) dst[e0 + e] = ScalarFormats.ToFp8E4M3(rows[e]);
                return;
        }
        EncodeQuantized(layout, rows, firstToken, count, dst);
    }

    private static void EncodeQuantized(BlockLayout layout, ReadOnlySpan<float> rows, int firstToken, int count, Span<byte> dst)
    {
        var format = layout.Format;
        int bits = format.BitsPerElement(), groups = layout.GroupCount, d = layout.HeadDim, gs = layout.GroupSize;
        int qmax = (1 << bits) - 1, end = firstToken + count, e0 = firstToken * d;
        Span<int> idx = gs <= 1024 ? stackalloc int[gs] : new int[gs];
        var scales = dst.Slice(layout.CodeBytes, 2 * groups);
        var mins = format.ParametersPerGroup() == 2 ? dst.Slice(layout.CodeBytes + 2 * groups, 2 * groups) : default;
        // The groups touching tokens [firstToken, end): whole token groups (per channel) or the rows' channel groups.
        int g0 = layout.Axis == QuantAxis.PerChannel ? firstToken / gs * d : firstToken * (d / gs);
        int g1 = layout.Axis == QuantAxis.PerChannel ? (end + gs - 1) / gs * d : end * (d / gs);
        for (int g = g0; g < g1; g++)
        {
            int n = GroupElements(layout, g, end, idx);
            if (n == 0) continue;
            var els = idx[..n];
            for (int k = 0; k < n; k++) els[k] -= e0; // element index → index into rows
            ReadOnlySpan<float> src = rows;
            double scale16, min16;
            switch (format)
            {
                case KvFormat.Ternary:
                    {
                        double s = 0;
                        foreach (int e in els) s += Math.Abs((double)src[e]);
                        ushort sb = ScalarFormats.ToF16Saturated(s / n);
                        BinaryPrimitives.WriteUInt16LittleEndian(scales[(2 * g)..], sb);
                        scale16 = ScalarFormats.FromF16(sb);
                        foreach (int e in els)
                        {
                            int t = scale16 > 0 ? (int)Math.Clamp(Math.Round(src[e] / scale16, MidpointRounding.ToEven), -1, 1) : 0;
                            SetCode(dst, bits, e0 + e, t + 1);
                        }
                        continue;
                    }
                case KvFormat.Binary:
                    {
                        double m = 0;
                        foreach (int e in els) m += src[e];
                        ushort mb = ScalarFormats.ToF16Saturated(m / n);
                        min16 = ScalarFormats.FromF16(mb);
                        double s = 0;
                        foreach (int e in els) s += Math.Abs(src[e] - min16);
                        ushort sb = ScalarFormats.ToF16Saturated(s / n);
                        BinaryPrimitives.WriteUInt16LittleEndian(scales[(2 * g)..], sb);
                        BinaryPrimitives.WriteUInt16LittleEndian(mins[(2 * g)..], mb);
                        foreach (int e in els) SetCode(dst, bits, e0 + e, src[e] >= min16 ? 1 : 0);
                        continue;
                    }
                default:
                    {
                        double lo = double.PositiveInfinity, hi = double.NegativeInfinity;
                        foreach (int e in els) { lo = Math.Min(lo, src[e]); hi = Math.Max(hi, src[e]); }
                        ushort sb = ScalarFormats.ToF16Saturated((hi - lo) / qmax);
                        ushort mb = ScalarFormats.ToF16Saturated(lo);
                        BinaryPrimitives.WriteUInt16LittleEndian(scales[(2 * g)..], sb);
                        BinaryPrimitives.WriteUInt16LittleEndian(mins[(2 * g)..], mb);
                        scale16 = ScalarFormats.FromF16(sb);
                        min16 = ScalarFormats.FromF16(mb);
                        foreach (int e in els)
                        {
                            int q = scale16 > 0 ? (int)Math.Clamp(Math.Round((src[e] - min16) / scale16, MidpointRounding.ToEven), 0, qmax) : 0;
                            SetCode(dst, bits, e0 + e, q);
                        }
                        continue;
                    }
            }
        }
    }

    /// <summary>
    /// Decodes the first <paramref name="tokenCount"/> rows of a block into <paramref name="dst"/>
    /// ([tokenCount, HeadDim] floats). For tests, tools and re-quantization; attention does not use it.
    /// </summary>
    public static void Decode(BlockLayout layout, ReadOnlySpan<byte> src, int tokenCount, Span<float> dst)
    {
        layout.CheckBlock(src.Length, tokenCount, "source");
        int d = layout.HeadDim, n = tokenCount * d;
        if (dst.Length < n) throw new ArgumentException($"{tokenCount} tokens of {d} channels need {n} floats, got {dst.Length}", nameof(dst));
        var format = layout.Format;
        switch (format)
        {
            case KvFormat.F32:
                MemoryMarshal.Cast<byte, float>(src[..(4 * n)]).CopyTo(dst);
                return;
            case KvFormat.F16:
                for (int e = 0; e < n; e++) dst[e] = ScalarFormats.FromF16(BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * e)..]));
                return;
            case KvFormat.BF16:
                for (int e = 0; e < n; e++) dst[e] = ScalarFormats.FromBf16(BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * e)..]));
                return;
            case KvFormat.Fp8E4M3:
                for (int e = 0; e < n; e++) dst[e] = ScalarFormats.FromFp8E4M3(src[e]);
                return;
            case KvFormat.VidKvKey:
            case KvFormat.VidKvValue:
                VidKvCodec.Decode(layout, src, tokenCount, dst);
                return;
        }
        int bits = format.BitsPerElement(), groups = layout.GroupCount, g0 = layout.GroupSize;
        int perRow = d / g0; // per-token groups per row
        for (int t = 0; t < tokenCount; t++)
        {
            for (int c = 0; c < d; c++)
            {
                int e = t * d + c;
                int g = layout.Axis == QuantAxis.PerChannel ? t / g0 * d + c : t * perRow + c / g0;
                float scale = ReadParameter(layout, src, 0, g);
                int q = GetCode(src, bits, e);
                dst[e] = format switch
                {
                    KvFormat.Ternary => (q - 1) * scale,
                    KvFormat.Binary => q == 1 ? ReadParameter(layout, src, 1, g) + scale : ReadParameter(layout, src, 1, g) - scale,
                    _ => ReadParameter(layout, src, 1, g) + q * scale,
                };
            }
        }
    }

    /// <summary>Parameter <paramref name="which"/> (0 = scale, 1 = min or mean) of group <paramref name="g"/>, as float.</summary>
    private static float ReadParameter(BlockLayout layout, ReadOnlySpan<byte> block, int which, int g)
        => ScalarFormats.FromF16(BinaryPrimitives.ReadUInt16LittleEndian(block[(layout.CodeBytes + 2 * (which * layout.GroupCount + g))..]));

    /// <summary>Element indices of group <paramref name="g"/> that hold tokens (&lt; tokenCount).</summary>
    private static int GroupElements(BlockLayout layout, int g, int tokenCount, Span<int> idx)
    {
        int d = layout.HeadDim, gs = layout.GroupSize, count = 0;
        if (layout.Axis == QuantAxis.PerChannel)
        {
            int tg = g / d, c = g % d;
            for (int t = tg * gs; t < Math.Min(tokenCount, (tg + 1) * gs); t++) idx[count++] = t * d + c;
        }
        else
        {
            int perRow = d / gs, t = g / perRow, j = g % perRow;
            if (t < tokenCount)
                for (int k = 0; k < gs; k++) idx[count++] = t * d + j * gs + k;
        }
        return count;
    }

    private static void SetCode(Span<byte> codes, int bits, int e, int q)
    {
        int bit = e * bits;
        codes[bit >> 3] |= (byte)(q << (bit & 7));
    }

    private static int GetCode(ReadOnlySpan<byte> codes, int bits, int e)
    {
        int bit = e * bits;
        return (codes[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
    }
}
