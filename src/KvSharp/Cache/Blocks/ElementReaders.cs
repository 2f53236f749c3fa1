using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// Reads element e of a block's code area as a float: the stored value for float formats, the integer
/// code for quantized ones. Load8 widens 8 consecutive elements (e a multiple of 8) straight into an AVX2
/// register, so kernels dequantize in registers; the generic kernels are specialized per reader by the JIT.
/// </summary>
internal interface IElementReader
{
    /// <summary>Element <paramref name="e"/> as a float (scalar path).</summary>
    static abstract float Load1(ref byte codes, int e);

    /// <summary>Elements e .. e+7 (e multiple of 8) as floats; needs AVX2.</summary>
    static abstract Vector256<float> Load8(ref byte codes, int e);
}

/// <summary>Whether the AVX2/FMA kernels run; tests turn them off per thread to check the scalar fallbacks.</summary>
internal static class Simd
{
    [ThreadStatic] private static bool t_scalarOnly;

    /// <summary>Forces the scalar fallbacks on the calling thread (for tests).</summary>
    public static bool ScalarOnly { get => t_scalarOnly; set => t_scalarOnly = value; }

    /// <summary>AVX2 + FMA available and not disabled on this thread.</summary>
    public static bool Enabled
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Avx2.IsSupported && Fma.IsSupported && !t_scalarOnly;
    }
}

internal readonly struct F32Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => Unsafe.ReadUnaligned<float>(ref Unsafe.Add(ref codes, e * 4));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e) => Unsafe.ReadUnaligned<Vector256<float>>(ref Unsafe.Add(ref codes, e * 4));
}

internal readonly struct F16Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => (float)Unsafe.ReadUnaligned<Half>(ref Unsafe.Add(ref codes, e * 2));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        // Place the f16 exponent+mantissa at the f32 positions and multiply by 2^112 to re-bias the
        // exponent; the multiply also normalizes f16 subnormals. Exponent 31 (inf/NaN) is patched to 255.
        var h = Avx2.ConvertToVector256Int32(Unsafe.ReadUnaligned<Vector128<ushort>>(ref Unsafe.Add(ref codes, e * 2)));
        var mag = Avx2.ShiftLeftLogical(Avx2.And(h, Vector256.Create(0x7FFF)), 13);
        var f = Avx.Multiply(mag.AsSingle(), Vector256.Create(5.192297e33f)); // 2^112
        var special = Avx2.CompareEqual(Avx2.And(h, Vector256.Create(0x7C00)), Vector256.Create(0x7C00));
        f = Avx.BlendVariable(f, Avx2.Or(mag, Vector256.Create(0x7F800000)).AsSingle(), special.AsSingle());
        var sign = Avx2.ShiftLeftLogical(Avx2.And(h, Vector256.Create(0x8000)), 16);
        return Avx.Or(f, sign.AsSingle());
    }
}

internal readonly struct Bf16Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => ScalarFormats.FromBf16(Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref codes, e * 2)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        var h = Avx2.ConvertToVector256Int32(Unsafe.ReadUnaligned<Vector128<ushort>>(ref Unsafe.Add(ref codes, e * 2)));
        return Avx2.ShiftLeftLogical(h, 16).AsSingle();
    }
}

internal readonly struct Fp8Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => ScalarFormats.FromFp8E4M3(Unsafe.Add(ref codes, e));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        // Same re-biasing trick as F16: the 7 magnitude bits go to f32 bits 20..26, times 2^(127-7).
        // (0x7F, NaN, decodes as 480 here; the encoder only produces it for NaN input.)
        var b = Avx2.ConvertToVector256Int32(Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref codes, e))).AsByte());
        var mag = Avx2.ShiftLeftLogical(Avx2.And(b, Vector256.Create(0x7F)), 20);
        var f = Avx.Multiply(mag.AsSingle(), Vector256.Create(1.329228e36f)); // 2^120
        var sign = Avx2.ShiftLeftLogical(Avx2.And(b, Vector256.Create(0x80)), 24);
        return Avx.Or(f, sign.AsSingle());
    }
}

internal readonly struct Code8Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => Unsafe.Add(ref codes, e);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
        => Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(
            Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref codes, e))).AsByte()));
}

internal readonly struct Code4Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => (Unsafe.Add(ref codes, e >> 1) >> ((e & 1) * 4)) & 0xF;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        // 8 nibbles = one little-endian uint; broadcast it and shift lane i right by 4i.
        var u = Vector256.Create(Unsafe.ReadUnaligned<uint>(ref Unsafe.Add(ref codes, e >> 1)));
        var q = Avx2.And(Avx2.ShiftRightLogicalVariable(u, Vector256.Create(0u, 4, 8, 12, 16, 20, 24, 28)), Vector256.Create(0xFu));
        return Avx.ConvertToVector256Single(q.AsInt32());
    }
}

internal readonly struct Code2Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => (Unsafe.Add(ref codes, e >> 2) >> ((e & 3) * 2)) & 3;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        var u = Vector256.Create((uint)Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref codes, e >> 2)));
        var q = Avx2.And(Avx2.ShiftRightLogicalVariable(u, Vector256.Create(0u, 2, 4, 6, 8, 10, 12, 14)), Vector256.Create(3u));
        return Avx.ConvertToVector256Single(q.AsInt32());
    }
}

internal readonly struct Code1Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => (Unsafe.Add(ref codes, e >> 3) >> (e & 7)) & 1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        var u = Vector256.Create((uint)Unsafe.Add(ref codes, e >> 3));
        var q = Avx2.And(Avx2.ShiftRightLogicalVariable(u, Vector256.Create(0u, 1, 2, 3, 4, 5, 6, 7)), Vector256.Create(1u));
        return Avx.ConvertToVector256Single(q.AsInt32());
    }
}
