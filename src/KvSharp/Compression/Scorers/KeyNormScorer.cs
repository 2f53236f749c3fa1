namespace KvSharp.Compression.Scorers;

/// <summary>
/// Key-norm (Devoto et al. 2024): keys with a low L2 norm draw the most attention, so score = −‖k_t‖₂ of the stored
/// (post-RoPE, as attention reads it) key. Needs no attention pass.
/// </summary>
public sealed class KeyNormScorer : IScorer
{
    /// <inheritdoc />
    public string Text => "keynorm";

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        var scores = context.NewScores();
        int d = context.Cache.HeadDim;
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
            {
                var keys = context.Cache.ReadKeys(l, h);
                var s = new float[keys.Length / d];
                for (int i = 0; i < s.Length; i++)
                    s[i] = -System.Numerics.Tensors.TensorPrimitives.Norm(keys.AsSpan(i * d, d));
                scores[l, h] = s;
            }
        return scores;
    }
}
