using KvSharp.Cache.Blocks;

namespace KvSharp.Tests.Cache.Blocks;

/// <summary>Random KV-like inputs and float64 references shared by the block tests.</summary>
internal static class BlockTestData
{
    public static readonly KvFormat[] AllFormats = Enum.GetValues<KvFormat>();

    public static readonly KvFormat[] Quantized =
        [KvFormat.Int8, KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary];

    /// <summary>
    /// Gaussian rows [tokens, headDim] with a per-channel offset and a few outlier channels (×8),
    /// the shape that makes keys want per-channel scales.
    /// </summary>
    public static float[] Rows(int seed, int tokens, int headDim)
    {
        var rng = new Random(seed);
        var offset = new double[headDim];
        var gain = new double[headDim];
        for (int c = 0; c < headDim; c++)
        {
            offset[c] = Gaussian(rng) * 0.5;
            gain[c] = rng.Next(16) == 0 ? 8 : 1;
        }
        var x = new float[tokens * headDim];
        for (int t = 0; t < tokens; t++)
            for (int c = 0; c < headDim; c++)
                x[t * headDim + c] = (float)(offset[c] + gain[c] * Gaussian(rng));
        return x;
    }

    public static float[] Gaussians(int seed, int n, double sigma = 1)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(sigma * Gaussian(rng));
        return x;
    }

    public static double Gaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    public static byte[] Encode(BlockLayout layout, float[] src, int tokens)
    {
        var block = new byte[layout.ByteSize];
        BlockCodec.Encode(layout, src, tokens, block);
        return block;
    }

    public static float[] Decode(BlockLayout layout, byte[] block, int tokens)
    {
        var x = new float[tokens * layout.HeadDim];
        BlockCodec.Decode(layout, block, tokens, x);
        return x;
    }

    /// <summary>Layouts of every format on both axes with a few group sizes.</summary>
    public static IEnumerable<BlockLayout> Layouts(int tokens, int headDim)
    {
        foreach (var f in AllFormats)
        {
            if (f.IsVidKv())
            {
                yield return BlockLayout.ForKeys(f, headDim, tokens);
                yield return new BlockLayout(f, QuantAxis.PerChannel, f == KvFormat.VidKvKey ? headDim / 4 : tokens / 4, tokens, headDim);
                continue;
            }
            if (!f.IsQuantized()) { yield return new BlockLayout(f, QuantAxis.PerToken, 0, tokens, headDim); continue; }
            yield return BlockLayout.ForKeys(f, headDim, tokens);
            yield return BlockLayout.ForValues(f, headDim, tokens);
            yield return new BlockLayout(f, QuantAxis.PerChannel, tokens / 4, tokens, headDim);
            yield return new BlockLayout(f, QuantAxis.PerToken, 16, tokens, headDim);
        }
    }
}

/// <summary>Forces the scalar kernel fallbacks on this thread while alive (tests of the portable path).</summary>
internal sealed class ScalarScope : IDisposable
{
    private readonly bool _previous = Simd.ScalarOnly;
    public ScalarScope(bool scalar) => Simd.ScalarOnly = scalar;
    public void Dispose() => Simd.ScalarOnly = _previous;
}
