using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Integer dot products of quantized weight rows with activations quantized the way llama.cpp does
/// it: Q8_0 activations (blocks of 32, f16-rounded scale) for Q8_0/Q4_0 weights, Q8_K activations
/// (blocks of 256, f32 scale, 16-element sums) for Q4_K/Q6_K. Activation data is kept as separate
/// arrays (int8 values, scales, sums) rather than ggml's interleaved blocks so SIMD loads are aligned.
/// </summary>
internal static unsafe class QuantDot
{
    /// <summary>Whether the AVX2 paths run on this machine.</summary>
    public static readonly bool Simd = Avx2.IsSupported && Fma.IsSupported;

    // ---------- activation quantization ----------

    /// <summary>
    /// llama.cpp's x86 quantize_row_q8_0: d = amax/127 stored as f16, q = round-half-even(x * 127/amax).
    /// <paramref name="d"/> receives the f16-rounded scale as float.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void QuantizeQ8_0(float* x, int n, sbyte* q, float* d)
    {
        for (int b = 0; b < n / 32; b++)
        {
            float* xb = x + b * 32;
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(xb[j]));
            d[b] = (float)(Half)(amax / 127f);
            float id = amax != 0 ? 127f / amax : 0f;
            for (int j = 0; j < 32; j++) q[b * 32 + j] = (sbyte)MathF.Round(xb[j] * id);
        }
    }

    /// <summary>
    /// ggml's quantize_row_q8_K: iscale = -127/(value of largest magnitude), q = min(127, round(iscale*x)),
    /// d = 1/iscale, plus the sum of each 16 values.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void QuantizeQ8_K(float* x, int n, sbyte* q, float* d, short* bsums)
    {
        for (int b = 0; b < n / 256; b++)
        {
            float* xb = x + b * 256;
            sbyte* qb = q + b * 256;
            float amax = 0, max = 0;
            for (int j = 0; j < 256; j++)
            {
                float a = MathF.Abs(xb[j]);
                if (a > amax) { amax = a; max = xb[j]; }
            }
            if (amax == 0)
            {
                d[b] = 0;
                for (int j = 0; j < 256; j++) qb[j] = 0;
            }
            else
            {
                float iscale = -127f / max;
                for (int j = 0; j < 256; j++) qb[j] = (sbyte)Math.Min(127, (int)MathF.Round(iscale * xb[j]));
                d[b] = 1 / iscale;
            }
            for (int j = 0; j < 16; j++)
            {
                int s = 0;
                for (int l = 0; l < 16; l++) s += qb[j * 16 + l];
                bsums[b * 16 + j] = (short)s;
            }
        }
    }

    // All 65536 halves as floats (256 KiB, like ggml's table on machines without F16C): block scales of one
    // tensor share a few exponents, so the entries in use stay cached, and a lookup is two instructions
    // where the bit-twiddling conversion is about ten, a large share of a 32-element block's work.
    private static readonly float* HalfTable = BuildHalfTable();

    private static float* BuildHalfTable()
    {
        var t = (float*)NativeMemory.AlignedAlloc(65536 * sizeof(float), 64);
        for (int i = 0; i < 65536; i++) t[i] = (float)BitConverter.UInt16BitsToHalf((ushort)i);
        return t;
    }

    /// <summary>f16 block scale at <paramref name="p"/> as float.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float H(byte* p) => HalfTable[*(ushort*)p];

    /// <summary>
    /// Q4_K/Q5_K's 12 packed bytes as 8 scales (low 8 bytes) and 8 mins (high 8 bytes), whole words at a
    /// time: scales 0-3 and mins 0-3 are the low 6 bits of words 0 and 1; scales/mins 4-7 take the low/high
    /// nibbles of word 2 and the top 2 bits of words 0/1 as their bits 4-5.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ScalesMinsK4(byte* q, out ulong scales, out ulong mins)
    {
        uint u0 = *(uint*)q, u1 = *(uint*)(q + 4), u2 = *(uint*)(q + 8);
        uint s03 = u0 & 0x3f3f3f3f, m03 = u1 & 0x3f3f3f3f;
        uint s47 = (u2 & 0x0f0f0f0f) | (((u0 >> 6) & 0x03030303) << 4);
        uint m47 = ((u2 >> 4) & 0x0f0f0f0f) | (((u1 >> 6) & 0x03030303) << 4);
        scales = s03 | ((ulong)s47 << 32);
        mins = m03 | ((ulong)m47 << 32);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> DotI8(Vector256<sbyte> a, Vector256<sbyte> b)
    {
        // maddubs needs one unsigned operand: |a| times b with a's sign moved onto b.
        var p16 = Avx2.MultiplyAddAdjacent(Avx2.Abs(a), Avx2.Sign(b, a));
        return Avx2.MultiplyAddAdjacent(p16, Vector256.Create((short)1));
    }

    // ---------- Q8_0 x Q8_0 ----------

    /// <summary>dot of a Q8_0 weight row (<paramref name="nb"/> blocks) with a Q8_0 activation row.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q8_0(byte* w, sbyte* xq, float* xd, int nb)
    {
        var acc = Vector256<float>.Zero;
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 34;
            var wq = Avx.LoadVector256((sbyte*)(blk + 2));
            var xv = Avx.LoadVector256(xq + b * 32);
            var s = Avx.ConvertToVector256Single(DotI8(wq, xv));
            acc = Fma.MultiplyAdd(Vector256.Create(H(blk) * xd[b]), s, acc);
        }
        return Vector256.Sum(acc);
    }

    /// <summary>Scalar Q8_0 x Q8_0.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q8_0Scalar(byte* w, sbyte* xq, float* xd, int nb)
    {
        float sum = 0;
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 34;
            sbyte* q = (sbyte*)(blk + 2);
            int s = 0;
            for (int j = 0; j < 32; j++) s += q[j] * xq[b * 32 + j];
            sum += H(blk) * xd[b] * s;
        }
        return sum;
    }

    // ---------- Q4_0 x Q8_0 ----------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<sbyte> Nibbles(byte* q)
    {
        // Low nibbles are elements 0..15, high nibbles 16..31: the 16 bytes in both lanes, the upper
        // lane shifted right by 4 (per-64-bit-lane variable shift), then masked.
        var v = Avx2.BroadcastVector128ToVector256(q).AsUInt64();
        var shifted = Avx2.ShiftRightLogicalVariable(v, Vector256.Create(0UL, 0UL, 4UL, 4UL));
        return Avx2.And(shifted.AsByte(), Vector256.Create((byte)0x0F)).AsSByte();
    }

    /// <summary>dot of a Q4_0 weight row with a Q8_0 activation row.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q4_0(byte* w, sbyte* xq, float* xd, int nb)
    {
        var acc = Vector256<float>.Zero;
        var eight = Vector256.Create((sbyte)8);
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 18;
            var wq = Avx2.Subtract(Nibbles(blk + 2), eight);
            var s = Avx.ConvertToVector256Single(DotI8(wq, Avx.LoadVector256(xq + b * 32)));
            acc = Fma.MultiplyAdd(Vector256.Create(H(blk) * xd[b]), s, acc);
        }
        return Vector256.Sum(acc);
    }

    /// <summary>Scalar Q4_0 x Q8_0.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q4_0Scalar(byte* w, sbyte* xq, float* xd, int nb)
    {
        float sum = 0;
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 18;
            byte* q = blk + 2;
            sbyte* x = xq + b * 32;
            int s = 0;
            for (int j = 0; j < 16; j++) s += ((q[j] & 0xF) - 8) * x[j] + ((q[j] >> 4) - 8) * x[j + 16];
            sum += H(blk) * xd[b] * s;
        }
        return sum;
    }

    // ---------- Q4_K x Q8_K ----------

    /// <summary>dot of a Q4_K weight row (<paramref name="nb"/> super-blocks) with a Q8_K activation row.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q4_K(byte* w, sbyte* xq, float* xd, short* bsums, int nb)
    {
        var acc = Vector256<float>.Zero;
        var accm = Vector256<float>.Zero;
        var mask = Vector256.Create((byte)0x0F);
        var ones = Vector256.Create((short)1);
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 144;
            float d = H(blk) * xd[b], dmin = H(blk + 2) * xd[b];
            ScalesMinsK4(blk + 4, out ulong sc, out ulong mn);
            // mins term: sum_j m_j * (bsum[2j] + bsum[2j+1]), eight lanes at once.
            var pairs = Avx2.MultiplyAddAdjacent(Avx.LoadVector256(bsums + b * 16), ones);
            var m32 = Avx2.ConvertToVector256Int32((byte*)&mn);
            accm = Fma.MultiplyAdd(Vector256.Create(dmin), Avx.ConvertToVector256Single(Avx2.MultiplyLow(pairs, m32)), accm);
            byte* q = blk + 16;
            sbyte* x = xq + b * 256;
            var isum = Vector256<int>.Zero;
            for (int k = 0; k < 4; k++)
            {
                var v = Avx.LoadVector256(q + 32 * k);
                var lo = Avx2.And(v, mask);
                var hi = Avx2.And(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask);
                var slo = Vector256.Create((short)(byte)(sc >> (16 * k)));
                var shi = Vector256.Create((short)(byte)(sc >> (16 * k + 8)));
                isum = Avx2.Add(isum, Pair(lo, hi, x + 64 * k, slo, shi));
            }
            acc = Fma.MultiplyAdd(Vector256.Create(d), Avx.ConvertToVector256Single(isum), acc);
        }
        return Vector256.Sum(acc) - Vector256.Sum(accm);
    }

    /// <summary>Scalar Q4_K x Q8_K.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q4_KScalar(byte* w, sbyte* xq, float* xd, short* bsums, int nb)
    {
        float sum = 0;
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 144;
            byte* q = blk + 16;
            sbyte* x = xq + b * 256;
            int isum = 0, summ = 0;
            for (int j = 0; j < 8; j++)
            {
                Dequantize.ScaleMinK4(j, blk + 4, out int s, out int m);
                summ += m * (bsums[b * 16 + 2 * j] + bsums[b * 16 + 2 * j + 1]);
                int k = j / 2, shift = (j % 2) * 4, dot = 0;
                for (int l = 0; l < 32; l++) dot += ((q[32 * k + l] >> shift) & 0xF) * x[32 * j + l];
                isum += s * dot;
            }
            sum += H(blk) * xd[b] * isum - H(blk + 2) * xd[b] * summ;
        }
        return sum;
    }

    // ---------- Q6_K x Q8_K ----------

    /// <summary>dot of a Q6_K weight row with a Q8_K activation row: unsigned 6-bit levels times x,
    /// minus 32 times the 16-element activation sums (the -32 offset of the format).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q6_K(byte* w, sbyte* xq, float* xd, short* bsums, int nb)
    {
        var acc = Vector256<float>.Zero;
        var m4 = Vector256.Create((byte)0x0F);
        var m30 = Vector256.Create((byte)0x30);
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 210;
            sbyte* sc = (sbyte*)(blk + 192);
            float d = H(blk + 208) * xd[b];
            sbyte* x = xq + b * 256;
            // Offset term: sum_j sc[j] * bsum[j], 16 sub-blocks at once.
            var sc128 = Sse2.LoadVector128(sc);
            var scales16 = Avx2.ConvertToVector256Int16(sc128);
            var corr = Avx2.MultiplyAddAdjacent(Avx.LoadVector256(bsums + b * 16), scales16);
            var isum = Avx2.Subtract(Vector256<int>.Zero, Avx2.ShiftLeftLogical(corr, 5));
            for (int h = 0; h < 2; h++)
            {
                byte* ql = blk + 64 * h;
                var qh = Avx.LoadVector256(blk + 128 + 32 * h);
                var l0 = Avx.LoadVector256(ql);
                var l1 = Avx.LoadVector256(ql + 32);
                var q0 = Avx2.Or(Avx2.And(l0, m4), Avx2.And(Avx2.ShiftLeftLogical(qh.AsUInt16(), 4).AsByte(), m30));
                var q1 = Avx2.Or(Avx2.And(l1, m4), Avx2.And(Avx2.ShiftLeftLogical(qh.AsUInt16(), 2).AsByte(), m30));
                var q2 = Avx2.Or(Avx2.And(Avx2.ShiftRightLogical(l0.AsUInt16(), 4).AsByte(), m4), Avx2.And(qh, m30));
                var q3 = Avx2.Or(Avx2.And(Avx2.ShiftRightLogical(l1.AsUInt16(), 4).AsByte(), m4),
                    Avx2.And(Avx2.ShiftRightLogical(qh.AsUInt16(), 2).AsByte(), m30));
                sbyte* xh = x + 128 * h;
                isum = Avx2.Add(isum, Group(q0, xh, sc128, 4 * h));
                isum = Avx2.Add(isum, Group(q1, xh + 32, sc128, 4 * h + 1));
                isum = Avx2.Add(isum, Group(q2, xh + 64, sc128, 4 * h + 2));
                isum = Avx2.Add(isum, Group(q3, xh + 96, sc128, 4 * h + 3));
            }
            acc = Fma.MultiplyAdd(Vector256.Create(d), Avx.ConvertToVector256Single(isum), acc);
        }
        return Vector256.Sum(acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Group(Vector256<byte> q, sbyte* x, Vector128<sbyte> scales, int pair)
    {
        // 16 products per 128-bit lane: the low lane covers elements 0..15 (scale 2*pair), the high 16..31 (2*pair+1).
        var p = Avx2.MultiplyAddAdjacent(q, Avx.LoadVector256(x));
        return Avx2.MultiplyAddAdjacent(p, ScalePair(scales, pair));
    }

    /// <summary>Scales 2i (eight shorts) and 2i+1 (eight shorts): a byte shuffle then sign extension.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> ScalePair(Vector128<sbyte> scales, int i)
    {
        var sel = Sse2.Add(Vector128.Create((byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), Vector128.Create((byte)(2 * i)));
        return Avx2.ConvertToVector256Int16(Ssse3.Shuffle(scales, sel.AsSByte()));
    }

    /// <summary>Scalar Q6_K x Q8_K.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q6_KScalar(byte* w, sbyte* xq, float* xd, short* bsums, int nb)
    {
        float sum = 0;
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 210;
            sbyte* sc = (sbyte*)(blk + 192);
            sbyte* x = xq + b * 256;
            int isum = 0;
            for (int i = 0; i < 256; i++)
            {
                int h = i / 128, g = (i % 128) / 32, l = i % 32;
                int lo = (blk[64 * h + l + (g & 1) * 32] >> ((g >> 1) * 4)) & 0xF;
                int hi = (blk[128 + 32 * h + l] >> (2 * g)) & 3;
                isum += sc[i / 16] * ((lo | (hi << 4)) - 32) * x[i];
            }
            sum += H(blk + 208) * xd[b] * isum;
        }
        return sum;
    }
    // ---------- prefill: one weight row against four activation rows ----------
    // The weight block is loaded and unpacked once and used for four activation rows, so batched products
    // are bound by integer multiply throughput rather than by weight unpacking.

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Fma4(Vector256<sbyte> absW, Vector256<sbyte> w, sbyte* x, float scale, Vector256<float> acc)
    {
        var p16 = Avx2.MultiplyAddAdjacent(absW.AsByte(), Avx2.Sign(Avx.LoadVector256(x), w));
        var p32 = Avx2.MultiplyAddAdjacent(p16, Vector256.Create((short)1));
        return Fma.MultiplyAdd(Vector256.Create(scale), Avx.ConvertToVector256Single(p32), acc);
    }

    /// <summary>y[t] = dot(Q8_0 or Q4_0 row, activation row t) for t &lt; 4; activation rows are
    /// <paramref name="qs"/> int8 values and <paramref name="ds"/> scales apart.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Q8Blocks4(byte* w, bool q4, sbyte* xq, float* xd, long qs, long ds, int nb, float* y)
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        var eight = Vector256.Create((sbyte)8);
        int bb = q4 ? 18 : 34;
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * bb;
            var wq = q4 ? Avx2.Subtract(Nibbles(blk + 2), eight) : Avx.LoadVector256((sbyte*)(blk + 2));
            var aw = Avx2.Abs(wq).AsSByte();
            float d = H(blk);
            sbyte* x = xq + b * 32;
            float* xs = xd + b;
            a0 = Fma4(aw, wq, x, d * xs[0], a0);
            a1 = Fma4(aw, wq, x + qs, d * xs[ds], a1);
            a2 = Fma4(aw, wq, x + 2 * qs, d * xs[2 * ds], a2);
            a3 = Fma4(aw, wq, x + 3 * qs, d * xs[3 * ds], a3);
        }
        y[0] = Vector256.Sum(a0); y[1] = Vector256.Sum(a1); y[2] = Vector256.Sum(a2); y[3] = Vector256.Sum(a3);
    }

    /// <summary>Four activation rows against one Q4_K row (see <see cref="Q4_K"/>); rows are
    /// <paramref name="qs"/> values, <paramref name="ds"/> scales and <paramref name="ss"/> sums apart.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Q4_Kx4(byte* w, sbyte* xq, float* xd, short* bsums, long qs, long ds, long ss, int nb, float* y)
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        var mask = Vector256.Create((byte)0x0F);
        byte* sc = stackalloc byte[8];
        byte* mn = stackalloc byte[8];
        float* mins = stackalloc float[4];
        for (int t = 0; t < 4; t++) mins[t] = 0;
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 144;
            float dw = H(blk), dminw = H(blk + 2);
            ScalesMinsK4(blk + 4, out *(ulong*)sc, out *(ulong*)mn);
            for (int t = 0; t < 4; t++)
            {
                short* bs = bsums + t * ss + b * 16;
                int summ = 0;
                for (int j = 0; j < 8; j++) summ += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
                mins[t] += dminw * xd[t * ds + b] * summ;
            }
            byte* q = blk + 16;
            sbyte* x = xq + b * 256;
            var i0 = Vector256<int>.Zero; var i1 = i0; var i2 = i0; var i3 = i0;
            for (int k = 0; k < 4; k++)
            {
                var v = Avx.LoadVector256(q + 32 * k);
                var lo = Avx2.And(v, mask);
                var hi = Avx2.And(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask);
                var slo = Vector256.Create((short)sc[2 * k]);
                var shi = Vector256.Create((short)sc[2 * k + 1]);
                sbyte* xk = x + 64 * k;
                i0 = Avx2.Add(i0, Pair(lo, hi, xk, slo, shi));
                i1 = Avx2.Add(i1, Pair(lo, hi, xk + qs, slo, shi));
                i2 = Avx2.Add(i2, Pair(lo, hi, xk + 2 * qs, slo, shi));
                i3 = Avx2.Add(i3, Pair(lo, hi, xk + 3 * qs, slo, shi));
            }
            a0 = Fma.MultiplyAdd(Vector256.Create(dw * xd[b]), Avx.ConvertToVector256Single(i0), a0);
            a1 = Fma.MultiplyAdd(Vector256.Create(dw * xd[ds + b]), Avx.ConvertToVector256Single(i1), a1);
            a2 = Fma.MultiplyAdd(Vector256.Create(dw * xd[2 * ds + b]), Avx.ConvertToVector256Single(i2), a2);
            a3 = Fma.MultiplyAdd(Vector256.Create(dw * xd[3 * ds + b]), Avx.ConvertToVector256Single(i3), a3);
        }
        y[0] = Vector256.Sum(a0) - mins[0]; y[1] = Vector256.Sum(a1) - mins[1];
        y[2] = Vector256.Sum(a2) - mins[2]; y[3] = Vector256.Sum(a3) - mins[3];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Pair(Vector256<byte> lo, Vector256<byte> hi, sbyte* x, Vector256<short> slo, Vector256<short> shi)
    {
        var plo = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(lo, Avx.LoadVector256(x)), slo);
        var phi = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(hi, Avx.LoadVector256(x + 32)), shi);
        return Avx2.Add(plo, phi);
    }

    /// <summary>Four activation rows against one Q6_K row (see <see cref="Q6_K"/>).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Q6_Kx4(byte* w, sbyte* xq, float* xd, short* bsums, long qs, long ds, long ss, int nb, float* y)
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        var m4 = Vector256.Create((byte)0x0F);
        var m30 = Vector256.Create((byte)0x30);
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * 210;
            sbyte* sc = (sbyte*)(blk + 192);
            float dw = H(blk + 208);
            sbyte* x = xq + b * 256;
            var sc128 = Sse2.LoadVector128(sc);
            var scales16 = Avx2.ConvertToVector256Int16(sc128);
            short* bs = bsums + b * 16;
            var i0 = Avx2.Subtract(Vector256<int>.Zero, Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(Avx.LoadVector256(bs), scales16), 5));
            var i1 = Avx2.Subtract(Vector256<int>.Zero, Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(Avx.LoadVector256(bs + ss), scales16), 5));
            var i2 = Avx2.Subtract(Vector256<int>.Zero, Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(Avx.LoadVector256(bs + 2 * ss), scales16), 5));
            var i3 = Avx2.Subtract(Vector256<int>.Zero, Avx2.ShiftLeftLogical(Avx2.MultiplyAddAdjacent(Avx.LoadVector256(bs + 3 * ss), scales16), 5));
            for (int h = 0; h < 2; h++)
            {
                byte* ql = blk + 64 * h;
                var qh = Avx.LoadVector256(blk + 128 + 32 * h);
                var l0 = Avx.LoadVector256(ql);
                var l1 = Avx.LoadVector256(ql + 32);
                sbyte* xh = x + 128 * h;
                for (int g = 0; g < 4; g++)
                {
                    var q = g switch
                    {
                        0 => Avx2.Or(Avx2.And(l0, m4), Avx2.And(Avx2.ShiftLeftLogical(qh.AsUInt16(), 4).AsByte(), m30)),
                        1 => Avx2.Or(Avx2.And(l1, m4), Avx2.And(Avx2.ShiftLeftLogical(qh.AsUInt16(), 2).AsByte(), m30)),
                        2 => Avx2.Or(Avx2.And(Avx2.ShiftRightLogical(l0.AsUInt16(), 4).AsByte(), m4), Avx2.And(qh, m30)),
                        _ => Avx2.Or(Avx2.And(Avx2.ShiftRightLogical(l1.AsUInt16(), 4).AsByte(), m4),
                            Avx2.And(Avx2.ShiftRightLogical(qh.AsUInt16(), 2).AsByte(), m30)),
                    };
                    var sv = ScalePair(sc128, 4 * h + g);
                    sbyte* xg = xh + 32 * g;
                    i0 = Avx2.Add(i0, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q, Avx.LoadVector256(xg)), sv));
                    i1 = Avx2.Add(i1, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q, Avx.LoadVector256(xg + qs)), sv));
                    i2 = Avx2.Add(i2, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q, Avx.LoadVector256(xg + 2 * qs)), sv));
                    i3 = Avx2.Add(i3, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q, Avx.LoadVector256(xg + 3 * qs)), sv));
                }
            }
            a0 = Fma.MultiplyAdd(Vector256.Create(dw * xd[b]), Avx.ConvertToVector256Single(i0), a0);
            a1 = Fma.MultiplyAdd(Vector256.Create(dw * xd[ds + b]), Avx.ConvertToVector256Single(i1), a1);
            a2 = Fma.MultiplyAdd(Vector256.Create(dw * xd[2 * ds + b]), Avx.ConvertToVector256Single(i2), a2);
            a3 = Fma.MultiplyAdd(Vector256.Create(dw * xd[3 * ds + b]), Avx.ConvertToVector256Single(i3), a3);
        }
        y[0] = Vector256.Sum(a0); y[1] = Vector256.Sum(a1); y[2] = Vector256.Sum(a2); y[3] = Vector256.Sum(a3);
    }
}
