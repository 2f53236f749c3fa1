using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Width-generic kernels: Vector512 for AVX-512 machines and Vector128 for machines without AVX2
/// (older x86, Arm NEON). Both are written with the cross-platform vector API, which .NET emulates
/// where the width is not accelerated, so the tests exercise them on any machine.
/// </summary>
internal static unsafe class PortableDot
{
    // ---------- Vector512 ----------

    /// <summary>y[k] = dot(w + k*stride, x) for k &lt; 4 F32 rows, 512-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void F32x4V512(float* w, long stride, float* x, int n, float* y)
    {
        float* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            var xv = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(Vector512.Load(w0 + i), xv, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Load(w1 + i), xv, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Load(w2 + i), xv, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Load(w3 + i), xv, a3);
        }
        float s0 = Vector512.Sum(a0), s1 = Vector512.Sum(a1), s2 = Vector512.Sum(a2), s3 = Vector512.Sum(a3);
        for (; i < n; i++) { s0 += w0[i] * x[i]; s1 += w1[i] * x[i]; s2 += w2[i] * x[i]; s3 += w3[i] * x[i]; }
        y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
    }

    /// <summary>Sixteen F16 (or BF16) values widened to float with 512-bit integer ops (same bit trick as the AVX2 path).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16V512(ushort* p, bool bf16)
    {
        var h = Vector512.WidenLower(Vector512.Create(Vector256.Load(p), Vector256<ushort>.Zero));
        if (bf16) return Vector512.ShiftLeft(h, 16).AsSingle();
        var em = Vector512.ShiftLeft(h & Vector512.Create(0x7fffu), 13);
        var sign = Vector512.ShiftLeft(h & Vector512.Create(0x8000u), 16);
        var f = (em.AsSingle() * Vector512.Create(0x77800000u).AsSingle()).AsUInt32();
        var special = Vector512.GreaterThan(em, Vector512.Create(0x0F7FFFFFu));
        return (Vector512.ConditionalSelect(special, em | Vector512.Create(0x7f800000u), f) | sign).AsSingle();
    }

    /// <summary>Four F16/BF16 rows against x, 512-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Half16x4V512(ushort* w, long stride, float* x, int n, float* y, bool bf16)
    {
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            var xv = Vector512.Load(x + i);
            a0 = Vector512.FusedMultiplyAdd(Widen16V512(w + i, bf16), xv, a0);
            a1 = Vector512.FusedMultiplyAdd(Widen16V512(w + stride + i, bf16), xv, a1);
            a2 = Vector512.FusedMultiplyAdd(Widen16V512(w + 2 * stride + i, bf16), xv, a2);
            a3 = Vector512.FusedMultiplyAdd(Widen16V512(w + 3 * stride + i, bf16), xv, a3);
        }
        float* s = stackalloc float[4];
        s[0] = Vector512.Sum(a0); s[1] = Vector512.Sum(a1); s[2] = Vector512.Sum(a2); s[3] = Vector512.Sum(a3);
        for (; i < n; i++)
            for (int k = 0; k < 4; k++) s[k] += FloatDot.Scalar(w[k * stride + i], bf16) * x[i];
        for (int k = 0; k < 4; k++) y[k] = s[k];
    }

    // ---------- Vector128 ----------

    /// <summary>dot of one F32 row, 128-bit vectors (two accumulators).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float F32V128(float* w, float* x, int n)
    {
        var a0 = Vector128<float>.Zero; var a1 = a0;
        int i = 0;
        for (; i + 8 <= n; i += 8)
        {
            a0 = Vector128.MultiplyAddEstimate(Vector128.Load(w + i), Vector128.Load(x + i), a0);
            a1 = Vector128.MultiplyAddEstimate(Vector128.Load(w + i + 4), Vector128.Load(x + i + 4), a1);
        }
        float s = Vector128.Sum(a0 + a1);
        for (; i < n; i++) s += w[i] * x[i];
        return s;
    }

    /// <summary>Eight F16/BF16 values to floats with 128-bit integer ops.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector128<float> Lo, Vector128<float> Hi) Widen8V128(ushort* p, bool bf16)
    {
        var (l, h) = Vector128.Widen(Vector128.Load(p));
        return (One(l, bf16), One(h, bf16));

        static Vector128<float> One(Vector128<uint> v, bool bf16)
        {
            if (bf16) return Vector128.ShiftLeft(v, 16).AsSingle();
            var em = Vector128.ShiftLeft(v & Vector128.Create(0x7fffu), 13);
            var sign = Vector128.ShiftLeft(v & Vector128.Create(0x8000u), 16);
            var f = (em.AsSingle() * Vector128.Create(0x77800000u).AsSingle()).AsUInt32();
            var special = Vector128.GreaterThan(em, Vector128.Create(0x0F7FFFFFu));
            return (Vector128.ConditionalSelect(special, em | Vector128.Create(0x7f800000u), f) | sign).AsSingle();
        }
    }

    /// <summary>dot of one F16/BF16 row, 128-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Half16V128(ushort* w, float* x, int n, bool bf16)
    {
        var a0 = Vector128<float>.Zero; var a1 = a0;
        int i = 0;
        for (; i + 8 <= n; i += 8)
        {
            var (lo, hi) = Widen8V128(w + i, bf16);
            a0 = Vector128.MultiplyAddEstimate(lo, Vector128.Load(x + i), a0);
            a1 = Vector128.MultiplyAddEstimate(hi, Vector128.Load(x + i + 4), a1);
        }
        float s = Vector128.Sum(a0 + a1);
        for (; i < n; i++) s += FloatDot.Scalar(w[i], bf16) * x[i];
        return s;
    }

    /// <summary>Integer dot of 16 int8 pairs, widened through int16 (no overflow: |127*128| fits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<int> DotI8V128(Vector128<sbyte> a, Vector128<sbyte> b)
    {
        var (al, ah) = Vector128.Widen(a);
        var (bl, bh) = Vector128.Widen(b);
        var (p0, p1) = Vector128.Widen(al * bl);
        var (p2, p3) = Vector128.Widen(ah * bh);
        return p0 + p1 + p2 + p3;
    }

    /// <summary>Q8_0 (or, with <paramref name="q4"/>, Q4_0) row against a Q8_0 activation row, 128-bit vectors.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static float Q8BlocksV128(byte* w, bool q4, sbyte* xq, float* xd, int nb)
    {
        float sum = 0;
        int bb = q4 ? 18 : 34;
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + b * bb;
            Vector128<sbyte> w0, w1;
            if (q4)
            {
                var v = Vector128.Load(blk + 2);
                w0 = (v & Vector128.Create((byte)0x0F)).AsSByte() - Vector128.Create((sbyte)8);
                w1 = Vector128.ShiftRightLogical(v, 4).AsSByte() - Vector128.Create((sbyte)8);
            }
            else
            {
                w0 = Vector128.Load((sbyte*)(blk + 2));
                w1 = Vector128.Load((sbyte*)(blk + 18));
            }
            var acc = DotI8V128(w0, Vector128.Load(xq + b * 32)) + DotI8V128(w1, Vector128.Load(xq + b * 32 + 16));
            sum += (float)*(Half*)blk * xd[b] * Vector128.Sum(acc);
        }
        return sum;
    }
}
