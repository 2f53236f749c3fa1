using System.Runtime.CompilerServices;

namespace KvSharp.Cache.Blocks;

/// <summary>Scalar conversions between float32 and the small float formats of KV blocks.</summary>
public static class ScalarFormats
{
    private static readonly float[] Fp8Table = BuildFp8Table();

    /// <summary>
    /// float32 → FP8 E4M3 (OCP): round to nearest even, saturating to ±448 (the format has no infinity);
    /// NaN → 0x7F. Subnormals (exponent field 0) are steps of 2^-9.
    /// </summary>
    public static byte ToFp8E4M3(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        uint sign = (bits >> 24) & 0x80;
        uint mag = bits & 0x7FFFFFFF;
        if (mag > 0x7F800000) return 0x7F; // NaN
        float a = BitConverter.UInt32BitsToSingle(mag);
        uint code;
        if (a < 0.015625f) // below the smallest normal 2^-6: subnormal grid of 2^-9 (the product is exact)
            code = (uint)MathF.Round(a * 512f, MidpointRounding.ToEven); // 8 rolls over into the first normal, code 0x08
        else
        {
            // Keep 3 mantissa bits with round-to-nearest-even on the 20 dropped bits; a carry walks into the exponent.
            uint r = (mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20;
            code = r - ((127 - 7) << 3);
        }
        if (code > 0x7E) code = 0x7E; // saturate at 448 (0x7F is NaN); also catches +inf
        return (byte)(sign | code);
    }

    /// <summary>FP8 E4M3 (OCP) → float32; 0x7F/0xFF are NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromFp8E4M3(byte code) => Fp8Table[code];

    private static float[] BuildFp8Table()
    {
        var t = new float[256];
        for (int c = 0; c < 256; c++)
        {
            int e = (c >> 3) & 0xF, m = c & 7;
            double v = e == 0 ? m * Math.Pow(2, -9) : (1 + m / 8.0) * Math.Pow(2, e - 7);
            if ((c & 0x7F) == 0x7F) v = double.NaN;
            t[c] = (float)((c & 0x80) != 0 ? -v : v);
        }
        return t;
    }

    /// <summary>float32 → bfloat16 bits, round to nearest even (NaN stays NaN).</summary>
    public static ushort ToBf16(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        if ((bits & 0x7FFFFFFF) > 0x7F800000) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    /// <summary>bfloat16 bits → float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float FromBf16(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>float32 → f16 bits, round to nearest even, saturated to ±65504 (used for scales and mins).</summary>
    internal static ushort ToF16Saturated(double x)
    {
        if (double.IsNaN(x)) x = 0;
        x = Math.Clamp(x, -65504.0, 65504.0);
        return BitConverter.HalfToUInt16Bits((Half)x);
    }

    /// <summary>f16 bits → float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float FromF16(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);
}
