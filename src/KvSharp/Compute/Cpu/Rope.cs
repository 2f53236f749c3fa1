using KvSharp.Models;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Rotary position embedding: precomputed inverse frequencies (with Llama-3 scaling when
/// configured) applied to q/k heads in either pairing convention.
/// </summary>
public sealed class Rope
{
    private readonly float[] _invFreq;
    private readonly RopeStyle _style;
    private readonly int _headDim;

    /// <summary>Builds the frequency table for <paramref name="config"/>.</summary>
    public Rope(ModelConfig config)
    {
        _headDim = config.HeadDim;
        _style = config.RopeStyle;
        _invFreq = InverseFrequencies(config);
    }

    /// <summary>theta_i = base^(-2i/d), adjusted by Llama-3 scaling (computed in double).</summary>
    public static float[] InverseFrequencies(ModelConfig config)
    {
        int half = config.HeadDim / 2;
        var inv = new float[half];
        for (int i = 0; i < half; i++)
        {
            double f = 1.0 / Math.Pow(config.RopeTheta, 2.0 * i / config.HeadDim);
            if (config.RopeScaling is { } s)
            {
                double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
                double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
                double wavelen = 2 * Math.PI / f;
                if (wavelen > lowWavelen) f /= s.Factor;
                else if (wavelen >= highWavelen)
                {
                    double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    f = (1 - smooth) * f / s.Factor + smooth * f;
                }
            }
            inv[i] = (float)f;
        }
        return inv;
    }

    /// <summary>Half the head dimension: the number of rotated pairs (and of cos/sin values per position).</summary>
    public int Pairs => _headDim / 2;

    /// <summary>
    /// cos and sin of every pair's angle for positions <paramref name="startPosition"/> .. +n-1, as [n, Pairs]
    /// rows. Computed once per forward chunk and shared by q and k of every layer.
    /// </summary>
    public void Angles(int startPosition, int n, Span<float> cos, Span<float> sin)
    {
        int half = Pairs;
        for (int t = 0; t < n; t++)
        {
            for (int i = 0; i < half; i++)
            {
                float angle = (startPosition + t) * _invFreq[i];
                cos[t * half + i] = MathF.Cos(angle);
                sin[t * half + i] = MathF.Sin(angle);
            }
        }
    }

    /// <summary>Rotates every head (of <see cref="ModelConfig.HeadDim"/> values) in <paramref name="x"/> to <paramref name="position"/>.</summary>
    public void Apply(Span<float> x, int position)
    {
        int half = Pairs;
        Span<float> cos = half <= 512 ? stackalloc float[half] : new float[half];
        Span<float> sin = half <= 512 ? stackalloc float[half] : new float[half];
        Angles(position, 1, cos, sin);
        Apply(x, cos, sin);
    }

    /// <summary>Rotates every head in <paramref name="x"/> by one position's angles (a row of <see cref="Angles"/>).</summary>
    public void Apply(Span<float> x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = Pairs;
        int heads = x.Length / _headDim;
        for (int h = 0; h < heads; h++)
        {
            var head = x.Slice(h * _headDim, _headDim);
            if (_style == RopeStyle.Interleaved)
            {
                for (int i = 0; i < half; i++)
                {
                    float x0 = head[2 * i], x1 = head[2 * i + 1];
                    head[2 * i] = x0 * cos[i] - x1 * sin[i];
                    head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
                }
            }
            else
            {
                for (int i = 0; i < half; i++)
                {
                    float x0 = head[i], x1 = head[i + half];
                    head[i] = x0 * cos[i] - x1 * sin[i];
                    head[i + half] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }

    /// <summary>Applies <see cref="Apply(Span{float}, int)"/> to <paramref name="n"/> consecutive rows of
    /// <paramref name="rowLength"/> values, row t at position <paramref name="startPosition"/> + t.</summary>
    public void Apply(Span<float> x, int rowLength, int n, int startPosition)
    {
        for (int t = 0; t < n; t++) Apply(x.Slice(t * rowLength, rowLength), startPosition + t);
    }
}
