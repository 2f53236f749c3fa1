using KvSharp.Compression.Budgets;
using KvSharp.Generation;

namespace KvSharp.Compression.Decoding;

/// <summary>
/// The schedule and eviction shared by decode presses: after every <see cref="DecodePress.Every"/>-th step, heads over
/// budget are scored by the method (<see cref="Score"/>) and cut back to <see cref="DecodePress.Tokens"/> candidates.
/// </summary>
internal abstract class DecodePressSession(DecodePress press, IDecodeCache cache) : IDecodeSession
{
    protected DecodePress Press { get; } = press;

    protected IDecodeCache Cache { get; } = cache;

    /// <summary>Compression steps that evicted something.</summary>
    public int Compressions { get; private set; }

    /// <summary>Tokens evicted over all heads so far.</summary>
    public long EvictedTokens { get; private set; }

    private HeadScores? _lastScores;
    private Func<HeadScores>? _readLastScores;

    /// <summary>
    /// The scores of the last compression step, per head in the cache's Positions order before eviction (for tests). Where
    /// the cache scored the cut (<see cref="ScoredOnCache"/>) they are read from it on the first ask, which must come before
    /// the session is disposed (the device frees them with its sums).
    /// </summary>
    public HeadScores? LastScores => _lastScores ??= _readLastScores?.Invoke();

    /// <inheritdoc />
    public virtual void BeforeStep(int step) { }

    /// <inheritdoc />
    public virtual void AfterStep(int step)
    {
        if (step % Press.Every == 0) Compress();
    }

    /// <summary>Scores of every stored token of every head (Positions order), higher = more important, +∞ = keep.</summary>
    protected abstract HeadScores Score();

    /// <summary>Whether any head that stores its own KV holds more candidates than the budget.</summary>
    protected bool OverBudget()
    {
        for (int l = 0; l < Cache.Layers; l++)
            if (Cache.SharedLayerSource(l) < 0)
                for (int h = 0; h < Cache.KvHeads; h++)
                    if (Candidates(l, h) > Press.Tokens) return true;
        return false;
    }

    /// <summary>Scores the heads and evicts each head's candidates beyond its budget.</summary>
    protected void Compress()
    {
        if (!OverBudget()) return;
        EvictedTokens += Cut();
        Compressions++;
        Evicted();
    }

    /// <summary>
    /// The compression's scoring and cut; returns the tokens evicted. Here on the host: <see cref="Score"/>, each head's
    /// candidates cut by <see cref="TopK.KeepMask"/>, one eviction of all heads. A method whose cache scores and cuts itself
    /// (H2O over <see cref="IRunningAttentionSums"/>) overrides it, recording its scores through <see cref="ScoredOnCache"/>.
    /// </summary>
    protected virtual long Cut()
    {
        var scores = Score();
        (_lastScores, _readLastScores) = (scores, null);
        long evicted = 0;
        var drops = new bool[Cache.Layers * Cache.KvHeads][];
        for (int l = 0; l < Cache.Layers; l++)
        {
            if (Cache.SharedLayerSource(l) >= 0) continue; // a shared layer stores nothing: its source is compressed
            for (int h = 0; h < Cache.KvHeads; h++)
            {
                int count = Cache.Positions(l, h).Length, first = count - Candidates(l, h);
                if (count - first <= Press.Tokens) continue;
                var keep = TopK.KeepMask(scores[l, h].AsSpan(first), Press.Tokens);
                var evict = new bool[count];
                for (int i = 0; i < keep.Length; i++)
                    if (!keep[i])
                    {
                        evict[first + i] = true;
                        evicted++;
                    }
                drops[l * Cache.KvHeads + h] = evict;
            }
        }
        Cache.Evict(drops); // all heads at once: the device compacts its pool once per compression
        return evicted;
    }

    /// <summary>The last compression's scores are the cache's, read by <paramref name="read"/> only if <see cref="LastScores"/> is asked for.</summary>
    protected void ScoredOnCache(Func<HeadScores> read) => (_lastScores, _readLastScores) = (null, read);

    /// <summary>Called after an eviction, so a method can drop the state of evicted tokens.</summary>
    protected virtual void Evicted() { }

    /// <summary>
    /// <paramref name="values"/> of the <paramref name="covered"/> positions spread over the <paramref name="stored"/>
    /// positions (both ascending); stored positions not covered get <paramref name="uncovered"/>.
    /// </summary>
    protected static float[] Align(ReadOnlySpan<int> stored, ReadOnlySpan<int> covered, ReadOnlySpan<float> values, float uncovered)
    {
        var result = new float[stored.Length];
        for (int i = 0, j = 0; i < result.Length; i++)
        {
            while (j < covered.Length && covered[j] < stored[i]) j++;
            result[i] = j < covered.Length && covered[j] == stored[i] ? values[j] : uncovered;
        }
        return result;
    }

    private int Candidates(int layer, int kvHead)
    {
        var positions = Cache.Positions(layer, kvHead);
        int p = 0;
        while (p < positions.Length && positions[p] < Press.Protect) p++;
        return positions.Length - p;
    }

    /// <inheritdoc />
    public virtual void Dispose() { }
}
