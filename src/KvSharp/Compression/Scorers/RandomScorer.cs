namespace KvSharp.Compression.Scorers;

/// <summary>Random scores (the baseline every method must beat), deterministic in <see cref="Seed"/>, layer and head.</summary>
public sealed class RandomScorer : IScorer
{
    /// <summary>Creates the scorer with <paramref name="seed"/>.</summary>
    public RandomScorer(int seed = 0) { Seed = seed; }

    /// <summary>The seed.</summary>
    public int Seed { get; }

    /// <inheritdoc />
    public string Text => $"random:seed={Seed}";

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        var scores = context.NewScores();
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
                scores[l, h] = Score(l, h, context.Cache.Positions(l, h).Count);
        return scores;
    }

    /// <summary>The scores of the <paramref name="count"/> tokens (layer, KV head) stores; shared with the device press.</summary>
    internal float[] Score(int layer, int kvHead, int count)
    {
        // HashCode.Combine is randomized per process; an explicit mix keeps runs reproducible.
        var rng = new Random(unchecked(Seed * 1_000_003 + layer * 7919 + kvHead) & int.MaxValue);
        var s = new float[count];
        for (int i = 0; i < s.Length; i++) s[i] = rng.NextSingle();
        return s;
    }
}
