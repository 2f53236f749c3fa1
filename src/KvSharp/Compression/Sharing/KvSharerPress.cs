using System.Globalization;
using KvSharp.Compression.Registry;

namespace KvSharp.Compression.Sharing;

/// <summary>
/// KVSharer at inference (<c>kvsharer:file=F.json</c>, optionally <c>layers=N</c> for the map's first N shares): each
/// shared layer's KV is dropped and it reads its source layer's cache from then on (<see cref="Cache.Paged.PagedKvCache.ShareLayer"/>),
/// so shared layers store nothing. Applied after prefill, the context's hidden states were computed unshared; every
/// later token (questions, answers) attends the source's keys and values. Shared layers are left whole by later
/// eviction presses (their source is compressed instead).
/// </summary>
public sealed class KvSharerPress : IKvPress
{
    /// <summary>The press's name in the text form.</summary>
    public const string Name = "kvsharer";

    /// <summary>Creates the press from a map; <paramref name="layers"/> = how many of its shares to apply (null = all).</summary>
    /// <exception cref="KvSharpException">More layers asked than the map has.</exception>
    public KvSharerPress(KvSharerMap map, string file, int? layers = null)
    {
        Map = map ?? throw new ArgumentNullException(nameof(map));
        File = file ?? throw new ArgumentNullException(nameof(file));
        if (layers is { } n && (n < 0 || n > map.Shares.Count))
            throw new KvSharpException($"kvsharer: layers={n} but the map '{file}' has {map.Shares.Count} shares (0..{map.Shares.Count})");
        Count = layers;
    }

    /// <summary>The layer map.</summary>
    public KvSharerMap Map { get; }

    /// <summary>The map's file.</summary>
    public string File { get; }

    /// <summary>Shares applied (null = all of the map's).</summary>
    public int? Count { get; }

    /// <summary>The shares this press applies.</summary>
    public IReadOnlyList<LayerShare> Shares => Map.Shares.Take(Count ?? Map.Shares.Count).ToArray();

    /// <inheritdoc />
    public string Text => $"{Name}:file={File}" + (Count is { } n ? string.Create(CultureInfo.InvariantCulture, $",layers={n}") : "");

    /// <inheritdoc />
    /// <exception cref="KvSharpException">The map was made for another layer count.</exception>
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        Map.CheckLayers(context.Layers, File);
        foreach (var s in Shares)
            if (context.Cache.SharedLayerSource(s.Layer) < 0) context.Cache.ShareLayer(s.Layer, s.Source);
    }

    /// <summary>The press's description for <see cref="PressRegistry"/>.</summary>
    public static PressDescription Description { get; } = new(Name, PressPartKind.Scorer,
        "KVSharer: layers reuse another layer's KV cache by a calibrated map (kvsharp calibrate kvsharer); shared layers store nothing",
        [new("file", "", "layer map from 'kvsharp calibrate kvsharer', required"), new("layers", "all", "apply the map's first N shares")], []);

    /// <summary>Whether <paramref name="part"/> (one top-level unit of a press text) names this press.</summary>
    internal static bool Names(string part)
    {
        int end = part.IndexOf(':');
        return (end < 0 ? part : part[..end]).Trim().Equals(Name, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>Builds the press of <paramref name="part"/>, one unit of <paramref name="press"/>.</summary>
    internal static KvSharerPress Create(string press, string part)
    {
        int colon = part.IndexOf(':');
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in PressRegistry.ParseParameters(press, colon < 0 ? null : part[(colon + 1)..]))
            if (!values.TryAdd(k, v)) throw new KvSharpException($"press '{press}': parameter '{k}' is given twice");
        var args = new PressArguments(press, values);
        string file = args.Raw("file") ?? throw args.Error("kvsharer needs file=PATH (a layer map written by 'kvsharp calibrate kvsharer')");
        int? layers = args.Has("layers") ? args.Int("layers", 0, 0) : null;
        args.CheckAllUsed(Description.Parameters.Select(p => p.Name));
        try { return new KvSharerPress(KvSharerMap.Load(file), file, layers); }
        catch (KvSharpException e) when (!e.Message.StartsWith("press '", StringComparison.Ordinal)) { throw args.Error(e.Message); }
    }
}
