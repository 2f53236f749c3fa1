using KvSharp.Compression.Decoding;
using KvSharp.Generation;

namespace KvSharp.Compression.Registry;

/// <summary>
/// Presses applied while generating, by name, and their text form (CLI <c>--decode-press</c>,
/// <see cref="GenerationOptions.DecodeCompression"/>): <c>name[:param=value,...]</c>, e.g.
/// <c>rkv:tokens=512,every=128</c> (every 128 generated tokens, each (layer, KV head) over 512 candidate tokens is cut
/// back to 512) or <c>h2o:tokens=256,window=32</c>. The names are those of the prefill presses; the separate option
/// says they run during decoding.
/// </summary>
public static class DecodePressRegistry
{
    private sealed record Entry(PressDescription Description, Func<PressArguments, DecodePress> Create);

    private static readonly PressParameter[] Schedule =
    [
        new("tokens", "1024", "candidate tokens each (layer, KV head) keeps after a compression step, >= 1"),
        new("protect", "1", "leading positions never evicted and outside the budget (BOS), >= 0"),
    ];

    private static readonly Entry[] Entries =
    [
        new(new("rkv", PressPartKind.Decode, "R-KV while decoding: every N steps, 0.07 x importance of the last window queries - 0.93 x key redundancy",
                [.. Schedule, new("every", "128", "decode steps between compression steps, >= 1"), new("window", "8", "observed last queries, kept, >= 1"),
                 new("kernel", "7", "max-pooling kernel, odd"), new("lambda", "0.07", "weight of importance, in [0, 1]"),
                 new("threshold", "0.5", "cosine similarity counted as redundant, in [-1, 1]")], ["r-kv"]),
            a => new RkvDecodePress(a.Int("tokens", 1024, 1), a.Int("every", 128, 1), a.Int("window", 8, 1), a.Int("kernel", 7, 1),
                a.Double("lambda", 0.07, 0, 1), a.Double("threshold", 0.5, -1, 1), a.Int("protect", 1, 0))),
        new(new("h2o", PressPartKind.Decode, "H2O while decoding: attention accumulated over every generated query + a recent window",
                [.. Schedule, new("every", "1", "decode steps between compression steps, >= 1"), new("window", "32", "most recent positions always kept, >= 0")], ["heavyhitters"]),
            a => new H2oDecodePress(a.Int("tokens", 1024, 1), a.Int("every", 1, 1), a.Int("window", 32, 0), a.Int("protect", 1, 0))),
    ];

    /// <summary>Every decode press with its parameters.</summary>
    public static IReadOnlyList<PressDescription> Presses { get; } = [.. Entries.Select(e => e.Description)];

    /// <summary>
    /// Builds the decode press <paramref name="text"/> describes; a <see cref="KvSharpException"/> names the problem and
    /// lists the valid names or parameters when the text is malformed or a value is out of range.
    /// </summary>
    public static DecodePress Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string press = text.Trim();
        int colon = press.IndexOf(':');
        string name = (colon < 0 ? press : press[..colon]).Trim().ToLowerInvariant();
        var entry = Entries.FirstOrDefault(e => e.Description.Name == name || e.Description.Aliases.Contains(name))
            ?? throw new KvSharpException($"decode press '{press}': unknown method '{name}'; decode presses: {string.Join(", ", Entries.Select(e => e.Description.Name))}");
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in PressRegistry.ParseParameters(press, colon < 0 ? null : press[(colon + 1)..]))
            if (!values.TryAdd(k, v)) throw new KvSharpException($"press '{press}': parameter '{k}' is given twice");
        var args = new PressArguments(press, values);
        DecodePress built;
        try
        {
            built = entry.Create(args);
        }
        catch (KvSharpException e) when (!e.Message.StartsWith("press '", StringComparison.Ordinal))
        {
            throw args.Error(e.Message);
        }
        args.CheckAllUsed(entry.Description.Parameters.Select(p => p.Name));
        return built;
    }
}
