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

    /// <summary>Rotates every head (of <see cref="ModelConfig.HeadDim"/> values) in <paramref name="x"/> to <paramref name="position"/>.</summary>
    public void Apply(Span<float> x, int position)
    {
        int half = _headDim / 2;
        for (int h = 0; h < x.Length / _headDim; h++)
        {
            var head = x.Slice(h * _headDim, _headDim);
            for (int i = 0; i < half; i++)
            {
                float angle = position * _invFreq[i];
                float c = MathF.Cos(angle), s = MathF.Sin(angle);
                int a = _style == RopeStyle.Interleaved ? 2 * i : i;
                int b = _style == RopeStyle.Interleaved ? 2 * i + 1 : i + half;
                float x0 = head[a], x1 = head[b];
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}
