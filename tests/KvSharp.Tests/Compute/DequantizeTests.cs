using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Tests.Compute;

/// <summary>Hand-built blocks decoded by the reference dequantizer, expected values from the format specs.</summary>
public unsafe class DequantizeTests
{
    private static float[] Decode(GgmlType type, byte[] block, int n)
    {
        var dst = new float[n];
        fixed (byte* p = block) Dequantize.Block(type, p, dst);
        return dst;
    }

    private static void PutHalf(byte[] b, int at, float v) => BitConverter.TryWriteBytes(b.AsSpan(at, 2), (Half)v);

    [Fact]
    public void Q8_0_IsScaleTimesInt8()
    {
        var b = new byte[34];
        PutHalf(b, 0, 0.5f);
        for (int j = 0; j < 32; j++) b[2 + j] = (byte)(sbyte)(j * 9 - 140 < -128 ? -128 : j * 9 - 140);
        var y = Decode(GgmlType.Q8_0, b, 32);
        for (int j = 0; j < 32; j++) Assert.Equal(0.5f * (sbyte)b[2 + j], y[j]);
    }

    [Fact]
    public void Q4_0_LowNibblesFirstHalfHighNibblesSecondHalf()
    {
        var b = new byte[18];
        PutHalf(b, 0, 0.25f);
        for (int j = 0; j < 16; j++) b[2 + j] = (byte)(j | ((15 - j) << 4));
        var y = Decode(GgmlType.Q4_0, b, 32);
        for (int j = 0; j < 16; j++)
        {
            Assert.Equal(0.25f * (j - 8), y[j]);
            Assert.Equal(0.25f * (15 - j - 8), y[j + 16]);
        }
    }

    [Fact]
    public void Q4_1_And_Q5_0_And_Q5_1_FollowSpec()
    {
        var b = new byte[20];
        PutHalf(b, 0, 2f); PutHalf(b, 2, -3f);
        for (int j = 0; j < 16; j++) b[4 + j] = (byte)((j % 16) | ((j / 2) << 4));
        var y = Decode(GgmlType.Q4_1, b, 32);
        for (int j = 0; j < 16; j++) { Assert.Equal(2f * j - 3f, y[j]); Assert.Equal(2f * (j / 2) - 3f, y[j + 16]); }

        // Q5_0: 5th bit of element j is bit j of the 32-bit qh word.
        uint qh = 0xA5C3_0F71;
        var c = new byte[22];
        PutHalf(c, 0, 0.5f);
        BitConverter.TryWriteBytes(c.AsSpan(2, 4), qh);
        for (int j = 0; j < 16; j++) c[6 + j] = (byte)((j * 5 % 16) | ((j * 3 % 16) << 4));
        var z = Decode(GgmlType.Q5_0, c, 32);
        for (int j = 0; j < 32; j++)
        {
            int nib = j < 16 ? (j * 5 % 16) : ((j - 16) * 3 % 16);
            int q = nib + (int)(((qh >> j) & 1) * 16);
            Assert.Equal(0.5f * (q - 16), z[j]);
        }

        var e = new byte[24];
        PutHalf(e, 0, 0.5f); PutHalf(e, 2, 1f);
        BitConverter.TryWriteBytes(e.AsSpan(4, 4), qh);
        Array.Copy(c, 6, e, 8, 16);
        var u = Decode(GgmlType.Q5_1, e, 32);
        for (int j = 0; j < 32; j++) Assert.Equal(z[j] + 0.5f * 16 + 1f, u[j]);
    }

    // Q4_K scales/mins: 8 six-bit pairs packed in 12 bytes. Bytes 0-3 hold scales 0-3 (low 6 bits) and the
    // top 2 bits of scales 4-7; bytes 4-7 mins 0-3 and the top 2 bits of mins 4-7; bytes 8-11 the low
    // nibbles of scale (low half) and min (high half) of sub-blocks 4-7.
    private static readonly int[] Scales = { 1, 5, 17, 63, 2, 33, 48, 60 };
    private static readonly int[] Mins = { 0, 3, 63, 9, 40, 1, 16, 32 };

    private static byte[] PackK4()
    {
        var p = new byte[12];
        for (int j = 0; j < 4; j++)
        {
            p[j] = (byte)(Scales[j] | ((Scales[j + 4] >> 4) << 6));
            p[j + 4] = (byte)(Mins[j] | ((Mins[j + 4] >> 4) << 6));
            p[j + 8] = (byte)((Scales[j + 4] & 15) | ((Mins[j + 4] & 15) << 4));
        }
        return p;
    }

    [Fact]
    public void Q4_K_ScaleMinUnpacking()
    {
        var p = PackK4();
        fixed (byte* q = p)
        {
            for (int j = 0; j < 8; j++)
            {
                Dequantize.ScaleMinK4(j, q, out int s, out int m);
                Assert.Equal(Scales[j], s);
                Assert.Equal(Mins[j], m);
            }
        }
    }

    [Fact]
    public void Q4_K_IsDTimesScaleTimesQMinusDminTimesMin()
    {
        var b = new byte[144];
        const float d = 0.5f, dmin = 0.25f;
        PutHalf(b, 0, d); PutHalf(b, 2, dmin);
        PackK4().CopyTo(b, 4);
        // 64 elements per 32 bytes: element 64k+l is the low nibble of byte 32k+l, 64k+32+l the high nibble.
        int Lo(int k, int l) => (l * 7 + k) % 16;
        int Hi(int k, int l) => (l * 11 + 3 * k) % 16;
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) b[16 + 32 * k + l] = (byte)(Lo(k, l) | (Hi(k, l) << 4));
        var y = Decode(GgmlType.Q4_K, b, 256);
        for (int k = 0; k < 4; k++)
        {
            for (int l = 0; l < 32; l++)
            {
                Assert.Equal(d * Scales[2 * k] * Lo(k, l) - dmin * Mins[2 * k], y[64 * k + l], 6);
                Assert.Equal(d * Scales[2 * k + 1] * Hi(k, l) - dmin * Mins[2 * k + 1], y[64 * k + 32 + l], 6);
            }
        }
    }

    [Fact]
    public void Q6_K_SixBitLevelsWithInt8SubBlockScales()
    {
        var b = new byte[210];
        const float d = 0.125f;
        var sc = new sbyte[16];
        for (int i = 0; i < 16; i++) { sc[i] = (sbyte)((i * 13 % 41) - 20); b[192 + i] = (byte)sc[i]; }
        PutHalf(b, 208, d);
        int Level(int i) => (i * 7 + i / 64) % 64;
        // Per 128-element half h (ql += 64, qh += 32): for l < 32, element l takes ql[l] low nibble and qh[l]
        // bits 0-1, element l+32 ql[l+32] low / bits 2-3, l+64 ql[l] high / bits 4-5, l+96 ql[l+32] high / bits 6-7.
        for (int h = 0; h < 2; h++)
        {
            for (int l = 0; l < 32; l++)
            {
                int a = Level(128 * h + l), c = Level(128 * h + l + 32), e = Level(128 * h + l + 64), f = Level(128 * h + l + 96);
                b[64 * h + l] = (byte)((a & 15) | ((e & 15) << 4));
                b[64 * h + l + 32] = (byte)((c & 15) | ((f & 15) << 4));
                b[128 + 32 * h + l] = (byte)((a >> 4) | ((c >> 4) << 2) | ((e >> 4) << 4) | ((f >> 4) << 6));
            }
        }
        var y = Decode(GgmlType.Q6_K, b, 256);
        for (int i = 0; i < 256; i++) Assert.Equal(d * sc[i / 16] * (Level(i) - 32), y[i], 6);
    }

    [Fact]
    public void Q8_K_And_Q2_K_And_Q3_K_And_Q5_K_FollowSpec()
    {
        // Q2_K: scale byte s covers 16 elements: d*(s&15)*q - dmin*(s>>4); element order within each 128-half:
        // shift 0,2,4,6 over 32 bytes, each 32-element run split in two 16-element sub-blocks.
        var b = new byte[84];
        for (int i = 0; i < 16; i++) b[i] = (byte)(((i + 1) % 16) | ((i * 5 % 16) << 4));
        for (int i = 0; i < 64; i++) b[16 + i] = (byte)(i * 37 % 256);
        PutHalf(b, 80, 0.5f); PutHalf(b, 82, 0.25f);
        var y = Decode(GgmlType.Q2_K, b, 256);
        for (int i = 0; i < 256; i++)
        {
            int half = i / 128, shift = 2 * ((i % 128) / 32), l = i % 32;
            int q = (b[16 + 32 * half + l] >> shift) & 3;
            int s = b[i / 16];
            Assert.Equal(0.5f * (s & 15) * q - 0.25f * (s >> 4), y[i], 6);
        }

        // Q3_K: 2 low bits as in Q2_K; the high bit (bit i/32 of hmask[i%32]) set means no -4 offset;
        // scale j (6 bits, minus 32): low nibble from byte j (j<8) or j-8's high nibble, 2 high bits from byte 8+j%4.
        var c = new byte[110];
        for (int i = 0; i < 32; i++) c[i] = (byte)(i * 73 % 256);
        for (int i = 0; i < 64; i++) c[32 + i] = (byte)(i * 29 % 256);
        var s6 = new int[16];
        for (int j = 0; j < 16; j++) s6[j] = (j * 23 + 5) % 64;
        for (int j = 0; j < 16; j++)
        {
            if (j < 8) c[96 + j] |= (byte)(s6[j] & 15); else c[96 + j - 8] |= (byte)((s6[j] & 15) << 4);
            c[96 + 8 + j % 4] |= (byte)((s6[j] >> 4) << (2 * (j / 4)));
        }
        PutHalf(c, 108, 0.5f);
        var z = Decode(GgmlType.Q3_K, c, 256);
        for (int i = 0; i < 256; i++)
        {
            int half = i / 128, shift = 2 * ((i % 128) / 32), l = i % 32;
            int q = ((c[32 + 32 * half + l] >> shift) & 3) - (((c[l] >> (i / 32)) & 1) != 0 ? 0 : 4);
            Assert.Equal(0.5f * (s6[i / 16] - 32) * q, z[i], 6);
        }

        // Q5_K: Q4_K plus a 5th bit: bit (i/32) of qh[i%32].
        var e = new byte[176];
        PutHalf(e, 0, 0.5f); PutHalf(e, 2, 0.25f);
        PackK4().CopyTo(e, 4);
        for (int i = 0; i < 32; i++) e[16 + i] = (byte)(i * 91 % 256);
        for (int i = 0; i < 128; i++) e[48 + i] = (byte)(i * 57 % 256);
        var u = Decode(GgmlType.Q5_K, e, 256);
        for (int i = 0; i < 256; i++)
        {
            int k = i / 64, l = i % 32, sub = i / 32;
            int nib = (i % 64) < 32 ? e[48 + 32 * k + l] & 15 : e[48 + 32 * k + l] >> 4;
            int q = nib + (((e[16 + l] >> sub) & 1) << 4);
            Assert.Equal(0.5f * Scales[sub] * q - 0.25f * Mins[sub], u[i], 5);
        }

        var g = new byte[292];
        BitConverter.TryWriteBytes(g.AsSpan(0, 4), 0.75f);
        for (int i = 0; i < 256; i++) g[4 + i] = (byte)(sbyte)(i - 128);
        var v = Decode(GgmlType.Q8_K, g, 256);
        for (int i = 0; i < 256; i++) Assert.Equal(0.75f * (i - 128), v[i]);
    }

    [Fact]
    public void F16_And_BF16_Widen()
    {
        var h = new byte[8];
        PutHalf(h, 0, 1.5f); PutHalf(h, 2, -0.000061035156f); PutHalf(h, 4, 65504f); PutHalf(h, 6, 5.9604645e-8f);
        Assert.Equal(new[] { 1.5f, -0.000061035156f, 65504f, 5.9604645e-8f }, Decode(GgmlType.F16, h, 4));
        var bf = new byte[4];
        BitConverter.TryWriteBytes(bf.AsSpan(0, 2), (ushort)0x3FC0); // 1.5
        BitConverter.TryWriteBytes(bf.AsSpan(2, 2), (ushort)0xC2F7); // -123.5
        Assert.Equal(new[] { 1.5f, -123.5f }, Decode(GgmlType.BF16, bf, 2));
    }

    [Fact]
    public void PartialBlockIsRejected()
    {
        var b = new byte[34];
        Assert.Throws<ArgumentException>(() => Decode(GgmlType.Q8_0, b, 31));
    }
}
