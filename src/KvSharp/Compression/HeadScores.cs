namespace KvSharp.Compression;

/// <summary>
/// One score per stored token of every (layer, KV head), in the cache's <c>Positions(layer, kvHead)</c> order;
/// higher = more important. <see cref="float.PositiveInfinity"/> marks a token the scorer requires kept
/// (sinks, an observation window); it still counts against the budget.
/// </summary>
public sealed class HeadScores
{
    private readonly float[][] _scores;

    /// <summary>Creates empty scores (every head holds an empty array until set).</summary>
    public HeadScores(int layers, int kvHeads)
    {
        if (layers < 1 || kvHeads < 1) throw new ArgumentOutOfRangeException(nameof(layers), $"{layers} layers and {kvHeads} KV heads must both be ≥ 1");
        Layers = layers;
        KvHeads = kvHeads;
        _scores = new float[layers * kvHeads][];
        for (int i = 0; i < _scores.Length; i++) _scores[i] = [];
    }

    /// <summary>Layers.</summary>
    public int Layers { get; }

    /// <summary>KV heads per layer.</summary>
    public int KvHeads { get; }

    /// <summary>The scores of (layer, KV head).</summary>
    public float[] this[int layer, int kvHead]
    {
        get => _scores[Index(layer, kvHead)];
        set => _scores[Index(layer, kvHead)] = value ?? throw new ArgumentNullException(nameof(value));
    }

    /// <summary>The scores of head <paramref name="index"/> = layer × KvHeads + kvHead.</summary>
    public float[] this[int index] => _scores[index];

    /// <summary>Heads in all (Layers × KvHeads).</summary>
    public int HeadCount => _scores.Length;

    private int Index(int layer, int kvHead)
    {
        if ((uint)layer >= (uint)Layers) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {Layers}");
        if ((uint)kvHead >= (uint)KvHeads) throw new ArgumentOutOfRangeException(nameof(kvHead), $"KV head {kvHead} of {KvHeads}");
        return layer * KvHeads + kvHead;
    }
}
