namespace KvSharp.Compression.Quantization;

/// <summary>
/// A KVTuner candidate: key bits and value bits of one layer. The candidate set is
/// {KV8, K8V4, KV4, K4V2, KV2, K4V8, K2V4, K8V2}.
/// </summary>
/// <param name="KeyBits">Bits per key element (8, 4 or 2).</param>
/// <param name="ValueBits">Bits per value element (8, 4 or 2).</param>
public readonly record struct KvTunerPair(int KeyBits, int ValueBits)
{
    /// <summary>The eight candidates, in KVTuner's order.</summary>
    public static IReadOnlyList<KvTunerPair> Candidates { get; } =
        [new(8, 8), new(8, 4), new(4, 4), new(4, 2), new(2, 2), new(4, 8), new(2, 4), new(8, 2)];

    /// <summary>Equivalent bits of the pair: the mean of key and value bits (keys and values have equal sizes).</summary>
    public double MeanBits => (KeyBits + ValueBits) / 2.0;

    /// <summary>The formats the cache stores the pair in.</summary>
    public FormatPair Formats => FormatPair.Ints(KeyBits, ValueBits);

    /// <summary>The pair's name: KV8 when both are equal, K8V4 otherwise.</summary>
    public override string ToString() => KeyBits == ValueBits ? $"KV{KeyBits}" : $"K{KeyBits}V{ValueBits}";

    /// <summary>Parses a candidate name (KV8, K8V4, ..., case-insensitive); null when it is not one of the eight.</summary>
    public static KvTunerPair? TryParse(string text)
    {
        string s = text.Trim().ToUpperInvariant();
        foreach (var c in Candidates)
            if (c.ToString() == s || (c.KeyBits == c.ValueBits && s == $"K{c.KeyBits}V{c.ValueBits}")) return c;
        return null;
    }
}
