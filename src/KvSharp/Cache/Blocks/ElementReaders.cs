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

    /// <summary>Bytes before element <paramref name="e"/> (a multiple of 8), so hot loops can step unsigned byte offsets.</summary>
    static abstract nuint ByteOffset(nuint e);
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
    public static nuint ByteOffset(nuint e) => e * 4;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => Unsafe.ReadUnaligned<float>(ref Unsafe.Add(ref codes, e * 4));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e) => Unsafe.ReadUnaligned<Vector256<float>>(ref Unsafe.Add(ref codes, e * 4));
}

internal readonly struct F16Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static nuint ByteOffset(nuint e) => e * 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => (float)Unsafe.ReadUnaligned<Half>(ref Unsafe.Add(ref codes, e * 2));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        // Normal numbers: move exponent+mantissa to the f32 positions and add the bias difference (112) to the
        // exponent with integer ops; subnormals (exponent 0) are the integer mantissa times 2^-24; exponent 31
        // (inf/NaN) gets exponent 255. No float op ever sees a denormal input (slow on many Intel cores).
        var h = Avx2.ConvertToVector256Int32(Unsafe.ReadUnaligned<Vector128<ushort>>(ref Unsafe.Add(ref codes, e * 2)));
        var mag = Avx2.And(h, Vector256.Create(0x7FFF));
        var normal = Avx2.Add(Avx2.ShiftLeftLogical(mag, 13), Vector256.Create(112 << 23));
        var sub = Avx.Multiply(Avx.ConvertToVector256Single(mag), Vector256.Create(5.9604645e-8f)).AsInt32(); // 2^-24
        var f = Avx2.BlendVariable(normal, sub, Avx2.CompareGreaterThan(Vector256.Create(0x400), mag));
        f = Avx2.BlendVariable(f, Avx2.Or(normal, Vector256.Create(0x7F800000)), Avx2.CompareGreaterThan(mag, Vector256.Create(0x7BFF)));
        var sign = Avx2.ShiftLeftLogical(Avx2.And(h, Vector256.Create(0x8000)), 16);
        return Avx2.Or(f, sign).AsSingle();
    }
}

/// <summary>
/// F16 elements read as x·2^-112: the sign-extended bits shifted left 13 and masked are exactly the float32
/// with f16's exponent field and mantissa, whose value is x·2^-112 for every finite f16 (normals and
/// subnormals alike). 3 ops per 8 elements instead of <see cref="F16Reader"/>'s 10; callers fold 2^112 into
/// the query or weight (see BlockAttention) and must not use it on blocks holding inf/NaN (exponent 31 would
/// read as a finite 2^16-range value).
/// </summary>
internal readonly struct F16ScaledReader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static nuint ByteOffset(nuint e) => e * 2;

    private const int Mask = unchecked((int)0x8FFFE000);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e)
        => BitConverter.Int32BitsToSingle((Unsafe.ReadUnaligned<short>(ref Unsafe.Add(ref codes, e * 2)) << 13) & Mask);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        var h = Avx2.ConvertToVector256Int32(Unsafe.ReadUnaligned<Vector128<short>>(ref Unsafe.Add(ref codes, e * 2)));
        return Avx2.And(Avx2.ShiftLeftLogical(h, 13), Vector256.Create(Mask)).AsSingle();
    }
}

internal readonly struct Bf16Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static nuint ByteOffset(nuint e) => e * 2;

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
    public static nuint ByteOffset(nuint e) => e;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(ref byte codes, int e) => ScalarFormats.FromFp8E4M3(Unsafe.Add(ref codes, e));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(ref byte codes, int e)
    {
        // As for F16: normals by integer re-biasing (7 → 127, i.e. +120 on the exponent), subnormals as the
        // integer mantissa times 2^-9, so no denormal float is formed. (0x7F, NaN, decodes as 480 here; the
        // encoder only produces it for NaN input.)
        var b = Avx2.ConvertToVector256Int32(Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref codes, e))).AsByte());
        var mag = Avx2.And(b, Vector256.Create(0x7F));
        var normal = Avx2.Add(Avx2.ShiftLeftLogical(mag, 20), Vector256.Create(120 << 23));
        var sub = Avx.Multiply(Avx.ConvertToVector256Single(mag), Vector256.Create(0.001953125f)).AsInt32(); // 2^-9
        var f = Avx2.BlendVariable(normal, sub, Avx2.CompareGreaterThan(Vector256.Create(8), mag));
        var sign = Avx2.ShiftLeftLogical(Avx2.And(b, Vector256.Create(0x80)), 24);
        return Avx2.Or(f, sign).AsSingle();
    }
}

internal readonly struct Code8Reader : IElementReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static nuint ByteOffset(nuint e) => e;

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
    public static nuint ByteOffset(nuint e) => e / 2;

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
    public static nuint ByteOffset(nuint e) => e / 4;

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
    public static nuint ByteOffset(nuint e) => e / 8;

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
