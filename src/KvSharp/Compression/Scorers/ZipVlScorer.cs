using System.Globalization;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// ZipVL's importance: H2O's accumulated attention (over every later prefill query, re-run in chunks of
/// <see cref="Chunk"/>) divided by how many queries observed each token, so early tokens are not favoured merely for
/// being seen more often. Paired by default with the dynamic budget (keep the smallest set holding τ of each head's
/// mass: <c>zipvl+dynamic:mass=1−τ</c>). Tokens no query observed (the last chunk) are kept.
/// </summary>
public sealed class ZipVlScorer : IScorer
{
    private readonly H2oScorer _h2o;

    /// <summary>Creates the scorer.</summary>
    public ZipVlScorer(int chunk = 64)
    {
        _h2o = new H2oScorer(window: 0, chunk);
        Chunk = chunk;
    }

    /// <summary>Prefill queries re-run per observation.</summary>
    public int Chunk { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"zipvl:chunk={Chunk}");

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        var scores = _h2o.Score(context);
        int length = context.Tokens.Count, question = context.Question?.Count ?? 0;
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
                Normalize(scores[l, h], context.Cache.Positions(l, h), length, question);
        return scores;
    }

    /// <summary>
    /// Divides one head's accumulated attention <paramref name="scores"/> (at <paramref name="positions"/>) by the number of
    /// queries that observed each token (+∞ where none did), for a context of <paramref name="length"/> tokens and
    /// <paramref name="question"/> question queries. Shared with the CUDA backend, which accumulates on the device.
    /// </summary>
    internal void Normalize(float[] scores, IReadOnlyList<int> positions, int length, int question)
    {
        for (int i = 0; i < scores.Length; i++)
        {
            // Queries q observe t when t lies before q's chunk start (see H2oScorer), plus every question query.
            int firstObserver = (positions[i] / Chunk + 1) * Chunk;
            int observers = Math.Max(0, length - firstObserver) + question;
            scores[i] = observers == 0 ? float.PositiveInfinity : scores[i] / observers;
        }
    }
}
