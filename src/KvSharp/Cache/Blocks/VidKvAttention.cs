using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using KvSharp.Compute.Cpu;

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
        // Branch-free partition (the mask is data: a branch per channel mispredicts half the time): each channel is
        // written to both lists and only the list its bit names advances. Each list has a spare slot after it for the
        // other list's writes once it is complete: outliers at [0, m), normal channels at [m + 1, d + 1).
        var partition = (t_channels is { } ch && ch.Length >= d + 2 ? ch : t_channels = new int[Math.Max(d + 2, 258)]).AsSpan(0, d + 2);
        ref int chRef = ref MemoryMarshal.GetReference(partition);
        ref byte maskRef = ref MemoryMarshal.GetReference(block);
        int ko = 0, kn = m + 1;
        for (int c = 0; c < d; c++)
        {
            int bit = Unsafe.Add(ref maskRef, c >> 3) >> (c & 7) & 1;
            Unsafe.Add(ref chRef, Math.Min(ko, d + 1)) = c;
            Unsafe.Add(ref chRef, Math.Min(kn, d + 1)) = c;
            ko += bit;
            kn += 1 - bit;
        }
        if (ko != m) throw new KvSharpException($"corrupt VidKV key block: its channel mask has {ko} outlier channels, its layout {m}");
        ReadOnlySpan<int> outliers = partition[..m], normals = partition.Slice(m + 1, normal);
        // Both lists ascending, as the parameters are stored.

        // Code areas are widened a byte at a time through tables (4 codes or 8 signs per byte); each span is padded so
        // the last byte's table row fits.
        int oLen = (n * m + 7) & ~7, nLen = (n * normal + 15) & ~7;
        var s = Scratch(2 * d + oLen + nLen + g * (d + 2 * n));
        var parameters = s[..(2 * d)];                      // outlier step, outlier min, normal scale, normal mean (stored order)
        var outlierCodes = s.Slice(2 * d, oLen);            // [n, m] codes 0..3
        var signs = s.Slice(2 * d + oLen, nLen);            // [n, normal] ±1 (row 0 unused)
        int rest = 2 * d + oLen + nLen;
        var scaledOutliers = s.Slice(rest, g * m);          // [g, m] q∘step over the outlier channels
        var scaledNormal = s.Slice(rest + g * m, g * normal); // [g, normal] q∘scale over the normal channels
        var u = s.Slice(rest + g * d, g * n);               // [g, n] frequency coefficients of each query's normal part
        var inverse = s.Slice(rest + g * (d + n), g * n);   // [g, n] their inverse transform, per token
        var p = block[v.ParameterOffset..];
        ReadF16s(p, parameters);
        ref float codeTable = ref MemoryMarshal.GetArrayDataReference(Code2Floats);
        ref float signTable = ref MemoryMarshal.GetArrayDataReference(SignFloats);
        ref float oDst = ref MemoryMarshal.GetReference(outlierCodes);
        ref float nDst = ref MemoryMarshal.GetReference(signs);
        ref byte oc = ref MemoryMarshal.GetReference(block[v.FirstCodeOffset..v.SecondCodeOffset]);
        for (int b = 0, bytes = (2 * n * m + 7) / 8; b < bytes; b++)
            Vector128.LoadUnsafe(ref codeTable, (nuint)(4 * Unsafe.Add(ref oc, b))).StoreUnsafe(ref oDst, (nuint)(4 * b));
        ref byte nc = ref MemoryMarshal.GetReference(block[v.SecondCodeOffset..v.ParameterOffset]);
        for (int b = 0, bytes = (n * normal + 7) / 8; b < bytes; b++)
            Vector256.LoadUnsafe(ref signTable, (nuint)(8 * Unsafe.Add(ref nc, b))).StoreUnsafe(ref nDst, (nuint)(8 * b));

        // All of the group's queries go through each row set at once (the float-row kernels share every widened row
        // among 4 queries), and the inverse transform is one more such product: inverse[i, t] = Σ_j φ_j(t)·u[i, j]
        // with the basis read transposed ([t, j]) and u[i, 0] zeroed (sign row 0 is not stored: the mean is a parameter).
        for (int i = 0; i < g; i++)
        {
            var q = queries.Slice(i * d, d);
            float bias = ScaleGathered(q, outliers, parameters[..m], parameters.Slice(m, m), scaledOutliers.Slice(i * m, m))
                + ScaleGathered(q, normals, parameters.Slice(2 * m, normal), parameters.Slice(2 * m + normal, normal), scaledNormal.Slice(i * normal, normal));
            scores.Slice(i * n, n).Fill(bias);
        }
        if (m > 0)
        {
            BlockAttention.ScoresRows(outlierCodes, m, n, scaledOutliers, g, inverse);
            TensorPrimitives.Add(scores[..(g * n)], inverse, scores[..(g * n)]);
        }
        if (normal > 0 && n > 1)
        {
            BlockAttention.ScoresRows(signs, normal, n, scaledNormal, g, u);
            for (int i = 0; i < g; i++) u[i * n] = 0;
            BlockAttention.ScoresRows(RealFourierBasis.SingleTransposed(n), n, n, u, g, inverse);
            TensorPrimitives.Add(scores[..(g * n)], inverse, scores[..(g * n)]);
        }
    }

    public static void AccumulateValues(BlockLayout layout, ReadOnlySpan<byte> block, int n, ReadOnlySpan<float> weights, int g, Span<float> acc)
    {
        int d = layout.HeadDim;
        if (layout.Format != KvFormat.VidKvValue)
        {
            var rows = Scratch(n * d + 8)[..(n * d)];
            Widen(layout, block, n, rows);
            BlockAttention.AccumulateRows(rows, d, n, weights, g, acc);
            return;
        }
        // v̂_t = trit_t∘scale for the other tokens and 0 trits for the salient ones, so Σ_t w_t·v̂_t = scale∘(Σ_t w_t·trit_t)
        // + Σ_salient w_t·v̂_t: the trits are widened unscaled, summed for all queries at once, and scaled once per query.
        var v = layout.Vid;
        var s = Scratch(n * d + 8 + 2 * g * d + d);
        var trits = s[..(n * d)];
        var sums = s.Slice(n * d + 8, g * d);
        var salient = s.Slice(n * d + 8 + g * d, d);
        var scales = s.Slice(n * d + 8 + g * d + d, d);
        WidenTrits(block[v.FirstCodeOffset..], n * d, trits); // trits is a slice of the scratch, which has the 8 floats of slack
        sums.Clear();
        BlockAttention.AccumulateRows(trits, d, n, weights, g, sums);
        ReadF16s(block[v.ParameterOffset..], scales);
        for (int i = 0; i < g; i++)
            TensorPrimitives.MultiplyAdd(sums.Slice(i * d, d), scales, acc.Slice(i * d, d), acc.Slice(i * d, d));
        for (int t = 0, slot = 0; t < n && slot < layout.GroupSize; t++)
        {
            if ((block[t >> 3] >> (t & 7) & 1) == 0) continue;
            SalientRow(layout, block, slot++, salient);
            for (int i = 0; i < g; i++)
                TensorPrimitives.MultiplyAdd(salient, weights[i * n + t], acc.Slice(i * d, d), acc.Slice(i * d, d));
        }
    }

    /// <summary>
    /// <paramref name="count"/> trits (5 per byte) as floats −1, 0, 1, through an 8-float table row per byte: each store
    /// overlaps the next by 3 floats, which the next byte's store overwrites, and the last writes up to 3 floats past
    /// <paramref name="count"/>: the memory after <paramref name="dst"/>'s first <paramref name="count"/> floats must have that
    /// slack (the thread's scratch does).
    /// </summary>
    private static void WidenTrits(ReadOnlySpan<byte> trits, int count, Span<float> dst)
    {
        ref float table = ref MemoryMarshal.GetArrayDataReference(TritFloats);
        ref float d0 = ref MemoryMarshal.GetReference(dst);
        int bytes = (count + 4) / 5;
        ref byte src = ref MemoryMarshal.GetReference(trits[..bytes]);
        for (int b = 0; b < bytes; b++)
            Vector256.LoadUnsafe(ref table, (nuint)(8 * Unsafe.Add(ref src, b))).StoreUnsafe(ref d0, (nuint)(5 * b));
    }

    /// <summary>
    /// scaled[k] = q[channels[k]]·mul[k]; returns Σ_k q[channels[k]]·add[k] (a query's part over one channel set, in the
    /// set's stored order): 8 channels per AVX2 gather.
    /// </summary>
    private static unsafe float ScaleGathered(ReadOnlySpan<float> q, ReadOnlySpan<int> channels, ReadOnlySpan<float> mul, ReadOnlySpan<float> add, Span<float> scaled)
    {
        int k = 0, count = channels.Length;
        float sum = 0;
        fixed (float* qp = q)
        fixed (int* cp = channels)
        fixed (float* mp = mul, ap = add, sp = scaled)
        {
            if (Avx2.IsSupported && Fma.IsSupported)
            {
                var acc = Vector256<float>.Zero;
                for (; k + 8 <= count; k += 8)
                {
                    var x = Avx2.GatherVector256(qp, Avx.LoadVector256(cp + k), 4);
                    Avx.Store(sp + k, Avx.Multiply(x, Avx.LoadVector256(mp + k)));
                    acc = Fma.MultiplyAdd(x, Avx.LoadVector256(ap + k), acc);
                }
                sum = Vector256.Sum(acc);
            }
            for (; k < count; k++)
            {
                float x = qp[cp[k]];
                sp[k] = x * mp[k];
                sum += x * ap[k];
            }
        }
        return sum;
    }

    /// <summary>The first dst.Length f16 parameters of an area to floats, 8 at a time (a block has 2–4 per channel).</summary>
    private static unsafe void ReadF16s(ReadOnlySpan<byte> parameters, Span<float> dst)
    {
        var src = parameters[..(2 * dst.Length)];
        fixed (byte* s = src)
        fixed (float* d = dst)
            FloatDot.HalfRow((ushort*)s, d, dst.Length);
    }

    /// <summary>Salient row <paramref name="slot"/> of a VidKvValue block: min + code·scale from its Int4 codes.</summary>
    private static void SalientRow(BlockLayout layout, ReadOnlySpan<byte> block, int slot, Span<float> row)
    {
        int d = layout.HeadDim;
        var v = layout.Vid;
        var p = block[v.ParameterOffset..];
        float scale = VidKvCodec.ReadF16(p, d + slot), min = VidKvCodec.ReadF16(p, d + layout.GroupSize + slot);
        var codes = block.Slice(v.SecondCodeOffset + slot * d / 2, d / 2);
        for (int c = 0; c < d; c++) row[c] = min + (codes[c >> 1] >> (4 * (c & 1)) & 15) * scale;
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
        ReadF16s(p, scales);
        WidenTrits(block[v.FirstCodeOffset..], n * d, rows); // rows is a slice of the scratch, which has the 8 floats of slack
        int slot = 0;
        for (int t = 0; t < n; t++)
        {
            var row = rows.Slice(t * d, d);
            if ((block[t >> 3] >> (t & 7) & 1) == 0)
            {
                TensorPrimitives.Multiply(row, scales, row);
                continue;
            }
            SalientRow(layout, block, slot++, row);
        }
    }
}
