namespace KvSharp.Compression.Scorers;

/// <summary>
/// StreamingLLM: the first <see cref="Sinks"/> positions (attention sinks) are always kept, then the most recent
/// tokens. Score = +∞ for a sink, else the token's position (later = more important).
/// </summary>
public sealed class StreamingLlmScorer : IScorer
{
    /// <summary>Creates the scorer keeping <paramref name="sinks"/> sink positions.</summary>
    public StreamingLlmScorer(int sinks = 4)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sinks);
        Sinks = sinks;
    }

    /// <summary>Positions 0..Sinks-1 are kept.</summary>
    public int Sinks { get; }

    /// <inheritdoc />
    public string Text => $"streamingllm:sinks={Sinks}";

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        var scores = context.NewScores();
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
                scores[l, h] = Score(context.Cache.Positions(l, h));
        return scores;
    }

    /// <summary>The scores of one head's stored positions; shared with the device press (positions are all it needs).</summary>
    internal float[] Score(IReadOnlyList<int> positions)
    {
        var s = new float[positions.Count];
        for (int i = 0; i < s.Length; i++) s[i] = positions[i] < Sinks ? float.PositiveInfinity : positions[i];
        return s;
    }
}
