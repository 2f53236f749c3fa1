using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// The three inner loops every block kernel reduces to, over a run of elements of one token row.
/// The elements are widened in registers by the reader <typeparamref name="R"/>; nothing is written
/// back as floats except the caller's accumulator.
/// </summary>
internal static class RowKernels<R> where R : struct, IElementReader
{
    /// <summary>Σ_i w[i] · x[first + i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(ref byte codes, int first, ReadOnlySpan<float> w)
    {
        int n = w.Length, i = 0;
        float sum = 0;
        ref float wr = ref MemoryMarshal.GetReference(w);
        if (Simd.Enabled && (first & 7) == 0 && n >= 8)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                acc0 = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref wr, (nuint)i), acc0);
                acc1 = Fma.MultiplyAdd(R.Load8(ref codes, first + i + 8), Vector256.LoadUnsafe(ref wr, (nuint)(i + 8)), acc1);
            }
            for (; i + 8 <= n; i += 8)
                acc0 = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref wr, (nuint)i), acc0);
            sum = Vector256.Sum(Avx.Add(acc0, acc1));
        }
        for (; i < n; i++) sum += Unsafe.Add(ref wr, i) * R.Load1(ref codes, first + i);
        return sum;
    }

    /// <summary>acc[i] += a · x[first + i] + b.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Axpy(ref byte codes, int first, float a, float b, Span<float> acc)
    {
        int n = acc.Length, i = 0;
        ref float ar = ref MemoryMarshal.GetReference(acc);
        if (Simd.Enabled && (first & 7) == 0)
        {
            var va = Vector256.Create(a);
            var vb = Vector256.Create(b);
            for (; i + 8 <= n; i += 8)
            {
                var y = Avx.Add(Vector256.LoadUnsafe(ref ar, (nuint)i), vb);
                Fma.MultiplyAdd(R.Load8(ref codes, first + i), va, y).StoreUnsafe(ref ar, (nuint)i);
            }
        }
        for (; i < n; i++) Unsafe.Add(ref ar, i) += a * R.Load1(ref codes, first + i) + b;
    }

    /// <summary>acc[i] += w · (min[i] + step[i] · x[first + i]) (per-channel parameters).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyAffine(ref byte codes, int first, float w, ReadOnlySpan<float> min, ReadOnlySpan<float> step, Span<float> acc)
    {
        int n = acc.Length, i = 0;
        ref float ar = ref MemoryMarshal.GetReference(acc);
        ref float mr = ref MemoryMarshal.GetReference(min);
        ref float sr = ref MemoryMarshal.GetReference(step);
        if (Simd.Enabled && (first & 7) == 0)
        {
            var vw = Vector256.Create(w);
            for (; i + 8 <= n; i += 8)
            {
                var v = Fma.MultiplyAdd(R.Load8(ref codes, first + i), Vector256.LoadUnsafe(ref sr, (nuint)i), Vector256.LoadUnsafe(ref mr, (nuint)i));
                Fma.MultiplyAdd(v, vw, Vector256.LoadUnsafe(ref ar, (nuint)i)).StoreUnsafe(ref ar, (nuint)i);
            }
        }
        for (; i < n; i++) Unsafe.Add(ref ar, i) += w * (Unsafe.Add(ref mr, i) + Unsafe.Add(ref sr, i) * R.Load1(ref codes, first + i));
    }
}
