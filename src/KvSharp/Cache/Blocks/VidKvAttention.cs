using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// Attention over VidKV blocks, read from their bytes (<see cref="VidKvLayout"/>), called by <see cref="BlockAttention"/>.
/// </summary>
/// <remarks>
/// Keys (<see cref="KvFormat.VidKvKey"/>): the inverse DFT is applied on the query side, never to the keys. With
/// outlier channels o (x̂ = min + step·code) and normal channels c (x̂_t = mean_c + scale_c·Σ_{j≥1} φ_j(t)·s_jc),
/// q·k̂_t = [Σ_o q_o·min_o + Σ_c q_c·mean_c] + Σ_o (q_o·step_o)·code_to + Σ_{j≥1} φ_j(t)·u_j, where
/// u_j = Σ_c (q_c·scale_c)·s_jc is the dot product of the scaled query with the signs of frequency row j. So a block
/// costs n·d code reads, n·m + (n−1)·(d−m) multiply-adds per query for the dot products and (n−1)·n for the inverse
/// transform of u (1024 at n = 32: less than the dot products at d ≥ 32), against n²·(d−m) to inverse-transform the keys.
/// <para>Values (<see cref="KvFormat.VidKvValue"/>): the block is widened once into a per-thread [n, d] float scratch
/// (trit·scale_c, salient rows from Int4), then each query adds Σ_t w_t·v̂_t. A VidKV block in the other role (keys
/// stored as VidKvValue or values as VidKvKey) is decoded to the scratch the same way.</para>
/// </remarks>
internal static class VidKvAttention
{
    /// <summary>Byte b of 2-bit codes → its 4 codes (LSB first) as floats.</summary>
    private static readonly float[] Code2Floats = Enumerable.Range(0, 4 * 256).Select(i => (float)(i / 4 >> (2 * (i % 4)) & 3)).ToArray();

    /// <summary>Byte b of sign bits → its 8 signs (LSB first) as ±1.</summary>
    private static readonly float[] SignFloats = Enumerable.Range(0, 8 * 256).Select(i => (i / 8 >> (i % 8) & 1) != 0 ? 1f : -1f).ToArray();

    /// <summary>Byte b of base-3 digits → its 5 trits as floats (then 3 unused zeros).</summary>
    private static readonly float[] TritFloats = Enumerable.Range(0, 8 * 256).Select(i => i % 8 < 5 ? (float)VidKvCodec.TritTable[5 * (i / 8) + i % 8] : 0f).ToArray();

    [ThreadStatic] private static float[]? t_scratch;
    [ThreadStatic] private static int[]? t_channels;

    private static Span<float> Scratch(int floats)
    {
        if (t_scratch is not { } s || s.Length < floats) t_scratch = s = new float[Math.Max(floats, 4096)];
        return s.AsSpan(0, floats);
    }

    public static void Scores(BlockLayout layout, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> queries, int g, Span<float> scores)
    {
        if (layout.Format != KvFormat.VidKvKey)
        {
            ScoresDecoded(layout, block, n, queries, g, scores);
            return;
        }
        int d = layout.HeadDim, m = layout.GroupSize, normal = d - m;
        var v = layout.Vid;
        var channels = (t_channels is { } ch && ch.Length >= d ? ch : t_channels = new int[Math.Max(d, 256)]).AsSpan(0, d);
        int ko = 0, kn = m;
        for (int c = 0; c < d; c++)
            if ((block[c >> 3] >> (c & 7) & 1) != 0) channels[ko++] = c; else channels[kn++] = c;
        // channels[..m]: outlier channels; channels[m..]: normal channels, both ascending, as the parameters are stored.

        // Code areas are widened a byte at a time through tables (4 codes or 8 signs per byte); each span is padded so
        // the last byte's table row fits.
        int oLen = (n * m + 7) & ~7, nLen = (n * normal + 15) & ~7;
        var s = Scratch(2 * d + oLen + nLen + d + n);
        var parameters = s[..(2 * d)];                      // outlier step, outlier min, normal scale, normal mean (stored order)
        var outlierCodes = s.Slice(2 * d, oLen);            // [n, m] codes 0..3
        var signs = s.Slice(2 * d + oLen, nLen);            // [n, normal] ±1 (row 0 unused)
        var scaled = s.Slice(2 * d + oLen + nLen, d);       // q∘step (outliers), q∘scale (normal)
        var u = s.Slice(3 * d + oLen + nLen, n);
        var p = block[v.ParameterOffset..];
        for (int k = 0; k < 2 * d; k++) parameters[k] = VidKvCodec.ReadF16(p, k);
        ref float codeTable = ref MemoryMarshal.GetArrayDataReference(Code2Floats);
        ref float signTable = ref MemoryMarshal.GetArrayDataReference(SignFloats);
        ref float oDst = ref MemoryMarshal.GetReference(outlierCodes);
        ref float nDst = ref MemoryMarshal.GetReference(signs);
        var oc = block[v.FirstCodeOffset..];
        for (int b = 0, bytes = (2 * n * m + 7) / 8; b < bytes; b++)
            Vector128.LoadUnsafe(ref codeTable, (nuint)(4 * oc[b])).StoreUnsafe(ref oDst, (nuint)(4 * b));
        var nc = block[v.SecondCodeOffset..];
        for (int b = 0, bytes = (n * normal + 7) / 8; b < bytes; b++)
            Vector256.LoadUnsafe(ref signTable, (nuint)(8 * nc[b])).StoreUnsafe(ref nDst, (nuint)(8 * b));
        var basis = RealFourierBasis.Single(n);

        for (int i = 0; i < g; i++)
        {
            var q = queries.Slice(i * d, d);
            float bias = 0;
            for (int k = 0; k < m; k++)
            {
                float qc = q[channels[k]];
                scaled[k] = qc * parameters[k];
                bias += qc * parameters[m + k];
            }
            for (int k = 0; k < normal; k++)
            {
                float qc = q[channels[m + k]];
                scaled[m + k] = qc * parameters[2 * m + k];
                bias += qc * parameters[2 * m + normal + k];
            }
            var row = scores.Slice(i * n, n);
            // Both row sets go through the float-row score kernel (four token rows per pass) instead of one Dot call
            // per token; u[0] (sign row 0 is unused) is computed and ignored.
            if (m > 0) BlockAttention.ScoresRows(outlierCodes, m, n, scaled[..m], 1, row);
            else row.Clear();
            TensorPrimitives.Add(row, bias, row);
            if (normal > 0) BlockAttention.ScoresRows(signs, normal, n, scaled.Slice(m, normal), 1, u);
            for (int j = 1; j < n; j++) TensorPrimitives.MultiplyAdd(basis.AsSpan(j * n, n), u[j], row, row);
        }
    }

    public static void AccumulateValues(BlockLayout layout, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> weights, int g, Span<float> acc)
    {
        int d = layout.HeadDim;
        var rows = Scratch(n * d + 8)[..(n * d)];
        Widen(layout, block, n, rows);
        BlockAttention.AccumulateRows(rows, d, n, weights, g, acc);
    }

    private static void ScoresDecoded(BlockLayout layout, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> queries, int g, Span<float> scores)
    {
        int d = layout.HeadDim;
        var rows = Scratch(n * d + 8)[..(n * d)];
        Widen(layout, block, n, rows);
        BlockAttention.ScoresRows(rows, d, n, queries, g, scores);
    }

    /// <summary>The block's n rows as floats: VidKvValue through the trit table, VidKvKey through the codec.</summary>
    private static void Widen(BlockLayout layout, ReadOnlySpan<byte> block, int n, Span<float> rows)
    {
        if (layout.Format != KvFormat.VidKvValue)
        {
            VidKvCodec.Decode(layout, block, n, rows);
            return;
        }
        int d = layout.HeadDim;
        var v = layout.Vid;
        var p = block[v.ParameterOffset..];
        Span<float> scales = d <= 1024 ? stackalloc float[d] : new float[d];
        for (int c = 0; c < d; c++) scales[c] = VidKvCodec.ReadF16(p, c);
        // 5 trits per byte, widened through an 8-float table row per byte: each store overlaps the next by 3 floats,
        // which the next byte's store overwrites (rows has 8 floats of slack).
        var trits = block[v.FirstCodeOffset..];
        ref float table = ref MemoryMarshal.GetArrayDataReference(TritFloats);
        ref float dst = ref MemoryMarshal.GetReference(rows);
        for (int b = 0, bytes = (n * d + 4) / 5; b < bytes; b++)
            Vector256.LoadUnsafe(ref table, (nuint)(8 * trits[b])).StoreUnsafe(ref dst, (nuint)(5 * b));
        int slot = 0;
        for (int t = 0; t < n; t++)
        {
            var row = rows.Slice(t * d, d);
            if ((block[t >> 3] >> (t & 7) & 1) == 0)
            {
                TensorPrimitives.Multiply(row, scales, row);
                continue;
            }
            float scale = VidKvCodec.ReadF16(p, d + slot), min = VidKvCodec.ReadF16(p, d + layout.GroupSize + slot);
            var codes = block.Slice(v.SecondCodeOffset + slot * d / 2, d / 2);
            for (int c = 0; c < d; c++) row[c] = min + (codes[c >> 1] >> (4 * (c & 1)) & 15) * scale;
            slot++;
        }
    }
}
