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
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
                scores[l, h] = Score(context.Cache.ReadKeys(l, h), context.Cache.HeadDim);
        return scores;
    }

    /// <summary>The scores of one head's stored keys (<paramref name="headDim"/> floats each).</summary>
    private static float[] Score(ReadOnlySpan<float> keys, int headDim)
    {
        var s = new float[keys.Length / headDim];
        for (int i = 0; i < s.Length; i++)
            s[i] = -System.Numerics.Tensors.TensorPrimitives.Norm(keys.Slice(i * headDim, headDim));
        return s;
    }

    /// <summary>The scores of one head's stored keys from their L2 norms (the device computes the norms); shared with the device press.</summary>
    internal static float[] FromNorms(ReadOnlySpan<float> norms)
    {
        var s = new float[norms.Length];
        for (int i = 0; i < s.Length; i++) s[i] = -norms[i];
        return s;
    }
}
