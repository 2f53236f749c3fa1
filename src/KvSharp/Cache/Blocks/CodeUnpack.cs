using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KvSharp.Cache.Blocks;

/// <summary>
/// Spreads a block's packed sub-byte codes (Int4, Int2/ternary, binary) to one byte per code, in element order,
/// into a small scratch that stays in L1. The attention kernels then read the scratch with <see cref="Code8Reader"/>
/// (zero-extend 8 bytes, convert: 2 ops per 8 elements) instead of widening the packed bits per 8 elements with a
/// broadcast, a variable shift and a mask for every row that every query group touches. Unpacking costs about
/// 2 vector ops per 32 codes (Int4, Int2) or one table load per 8 codes (binary), once per block and call.
/// The codes are the same integers either way, so results are bit-identical to the packed readers.
/// </summary>
internal static class CodeUnpack
{
    /// <summary>Largest scratch (bytes = codes) the kernels put on the stack; larger blocks read the packed codes directly.</summary>
    public const int MaxCodes = 16384;

    /// <summary>Whether <paramref name="format"/>'s first <paramref name="codes"/> codes are unpacked (SIMD path, sub-byte codes, small enough).</summary>
    public static bool Applies(KvFormat format, int codes)
        => codes <= MaxCodes && Sse2.IsSupported && Simd.Enabled
           && format is KvFormat.Int4 or KvFormat.Int2 or KvFormat.Ternary or KvFormat.Binary;

    /// <summary>dst[e] = code e for e &lt; dst.Length (a multiple of 8) of a block of <paramref name="format"/>.</summary>
    public static void Unpack(KvFormat format, ReadOnlySpan<byte> block, Span<byte> dst)
    {
        switch (format)
        {
            case KvFormat.Int4: Int4(block, dst); break;
            case KvFormat.Int2:
            case KvFormat.Ternary: Int2(block, dst); break;
            case KvFormat.Binary: Binary(block, dst); break;
            default: throw new ArgumentException($"{format} has no sub-byte codes to unpack", nameof(format));
        }
    }

    private static void Int4(ReadOnlySpan<byte> block, Span<byte> dst)
    {
        int bytes = dst.Length / 2, i = 0;
        _ = block[bytes - 1];
        ref byte s = ref MemoryMarshal.GetReference(block);
        ref byte d = ref MemoryMarshal.GetReference(dst);
        var mask = Vector128.Create((byte)0x0F);
        for (; i + 16 <= bytes; i += 16)
        {
            // Byte i holds codes 2i (low nibble) and 2i+1 (high nibble): split, then interleave back in element order.
            var v = Vector128.LoadUnsafe(ref s, (nuint)i);
            var lo = v & mask;
            var hi = Vector128.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask;
            Sse2.UnpackLow(lo, hi).StoreUnsafe(ref d, (nuint)(2 * i));
            Sse2.UnpackHigh(lo, hi).StoreUnsafe(ref d, (nuint)(2 * i + 16));
        }
        for (; i < bytes; i++)
        {
            byte b = Unsafe.Add(ref s, i);
            Unsafe.Add(ref d, 2 * i) = (byte)(b & 0xF);
            Unsafe.Add(ref d, 2 * i + 1) = (byte)(b >> 4);
        }
    }

    private static void Int2(ReadOnlySpan<byte> block, Span<byte> dst)
    {
        int bytes = dst.Length / 4, i = 0;
        _ = block[bytes - 1];
        ref byte s = ref MemoryMarshal.GetReference(block);
        ref byte d = ref MemoryMarshal.GetReference(dst);
        var mask = Vector128.Create((byte)3);
        for (; i + 16 <= bytes; i += 16)
        {
            // Byte i holds codes 4i..4i+3 at bits 0, 2, 4, 6: four planes, interleaved bytewise then pairwise.
            var v = Vector128.LoadUnsafe(ref s, (nuint)i);
            var c0 = v & mask;
            var c1 = Vector128.ShiftRightLogical(v.AsUInt16(), 2).AsByte() & mask;
            var c2 = Vector128.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask;
            var c3 = Vector128.ShiftRightLogical(v.AsUInt16(), 6).AsByte() & mask;
            var p01 = Sse2.UnpackLow(c0, c1).AsUInt16();
            var p23 = Sse2.UnpackLow(c2, c3).AsUInt16();
            var q01 = Sse2.UnpackHigh(c0, c1).AsUInt16();
            var q23 = Sse2.UnpackHigh(c2, c3).AsUInt16();
            Sse2.UnpackLow(p01, p23).AsByte().StoreUnsafe(ref d, (nuint)(4 * i));
            Sse2.UnpackHigh(p01, p23).AsByte().StoreUnsafe(ref d, (nuint)(4 * i + 16));
            Sse2.UnpackLow(q01, q23).AsByte().StoreUnsafe(ref d, (nuint)(4 * i + 32));
            Sse2.UnpackHigh(q01, q23).AsByte().StoreUnsafe(ref d, (nuint)(4 * i + 48));
        }
        for (; i < bytes; i++)
        {
            byte b = Unsafe.Add(ref s, i);
            for (int k = 0; k < 4; k++) Unsafe.Add(ref d, 4 * i + k) = (byte)((b >> (2 * k)) & 3);
        }
    }

    private static void Binary(ReadOnlySpan<byte> block, Span<byte> dst)
    {
        int bytes = dst.Length / 8;
        _ = block[bytes - 1];
        ref byte s = ref MemoryMarshal.GetReference(block);
        ref byte d = ref MemoryMarshal.GetReference(dst);
        ref ulong table = ref MemoryMarshal.GetArrayDataReference(BitTable);
        for (int i = 0; i < bytes; i++)
            Unsafe.WriteUnaligned(ref Unsafe.Add(ref d, 8 * i), Unsafe.Add(ref table, Unsafe.Add(ref s, i)));
    }

    /// <summary>Byte b → the 8 bytes (b >> k) &amp; 1, k = 0..7, little-endian in one ulong.</summary>
    private static readonly ulong[] BitTable = BuildBitTable();

    private static ulong[] BuildBitTable()
    {
        var t = new ulong[256];
        for (int b = 0; b < 256; b++)
            for (int k = 0; k < 8; k++)
                t[b] |= (ulong)((b >> k) & 1) << (8 * k);
        return t;
    }
}
