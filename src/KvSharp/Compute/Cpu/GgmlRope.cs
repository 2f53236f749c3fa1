using KvSharp.Models;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// RoPE as ggml's CPU rope computes it (<see cref="CpuNumerics.LlamaCpp"/>): θ starts at the position and is multiplied by
/// powf(base, −2/headDim) in float once per pair; cosf/sinf of that float; x0·cos − x1·sin and x0·sin + x1·cos each with
/// one fused multiply-add, the other product rounded. Pairs are (2i, 2i+1) in ggml's "normal" mode
/// (<see cref="RopeStyle.Interleaved"/>) and (i, i + headDim/2) in its NeoX mode (<see cref="RopeStyle.HalfSplit"/>).
/// </summary>
public sealed class GgmlRope
{
    private readonly int _headDim;
    private readonly RopeStyle _style;
    private readonly float _thetaScale;

    /// <summary>RoPE for <paramref name="config"/>; Llama-3 frequency scaling is not reproduced (a KvSharpException).</summary>
    public GgmlRope(ModelConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.RopeScaling is not null)
            throw new KvSharpException($"{config.Architecture}: llama.cpp numerics do not cover RoPE scaling (ggml's frequency factors are not reproduced)");
        _headDim = config.HeadDim;
        _style = config.RopeStyle;
        _thetaScale = MathF.Pow((float)config.RopeTheta, -2.0f / _headDim);
    }

    /// <summary>Rotated pairs per head.</summary>
    public int Pairs => _headDim / 2;

    /// <summary>cos and sin of every pair's angle for positions <paramref name="startPosition"/> .. +n-1, as [n, Pairs].</summary>
    public void Angles(int startPosition, int n, Span<float> cos, Span<float> sin)
    {
        for (int t = 0; t < n; t++)
        {
            float theta = startPosition + t;
            for (int i = 0; i < Pairs; i++)
            {
                cos[t * Pairs + i] = MathF.Cos(theta);
                sin[t * Pairs + i] = MathF.Sin(theta);
                theta *= _thetaScale;
            }
        }
    }

    /// <summary>Rotates every head of the row <paramref name="x"/> (heads · headDim) by one position's angles, in place.</summary>
    public void Apply(Span<float> x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int pairs = Pairs, second = _style == RopeStyle.Interleaved ? 1 : pairs;
        for (int h = 0; h < x.Length; h += _headDim)
            for (int i = 0; i < pairs; i++)
            {
                int a = h + (_style == RopeStyle.Interleaved ? 2 * i : i), b = a + second;
                float x0 = x[a], x1 = x[b], c = cos[i], s = sin[i];
                x[a] = MathF.FusedMultiplyAdd(x0, c, -(x1 * s));
                x[b] = MathF.FusedMultiplyAdd(x0, s, x1 * c);
            }
    }
}
