namespace KvSharp.GpuTests.Checks;

/// <summary>Fresh random inputs for every check (seeded from the clock; the seed is in the failure message).</summary>
public sealed class RandomData
{
    private readonly Random _random;

    public RandomData()
    {
        Seed = Environment.TickCount;
        _random = new Random(Seed);
    }

    public int Seed { get; }

    /// <summary>Uniform values in [-scale, scale).</summary>
    public float[] Floats(int n, float scale = 1f)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)((_random.NextDouble() * 2 - 1) * scale);
        return v;
    }

    public int Next(int max) => _random.Next(max);

    /// <summary>Values rounded through float16 (what a float16 buffer can hold exactly).</summary>
    public static Half[] ToHalf(float[] v) => v.Select(x => (Half)x).ToArray();

    /// <summary>bfloat16 bits by round-to-nearest-even (written here, independently of the engine's converter).</summary>
    public static ushort[] ToBFloat16(float[] v) => v.Select(x =>
    {
        uint b = BitConverter.SingleToUInt32Bits(x);
        return (ushort)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    }).ToArray();

    public static double BFloat16ToDouble(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);
}
