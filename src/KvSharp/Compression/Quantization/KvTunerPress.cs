namespace KvSharp.Compression.Quantization;

/// <summary>
/// KVTuner at inference: every stored token of layer l is re-quantized to the layer's (key bits, value bits) pair from a
/// configuration file written by <c>kvsharp calibrate kvtuner</c> (or by hand). Text form <c>kvtuner:file=PATH</c>.
/// Keys per channel over the cache's blocks, values per token, as the cache stores them; decode-time tokens use the
/// cache's own formats (KVTuner's per-layer pairs need per-layer cache formats, which the cache does not have).
/// </summary>
public sealed class KvTunerPress : IKvPress
{
    /// <summary>Creates the press from a file (read now, so a bad file fails at parse time).</summary>
    /// <exception cref="KvSharpException">The file is missing or invalid.</exception>
    public KvTunerPress(string file)
    {
        ArgumentNullException.ThrowIfNull(file);
        File = file;
        Config = KvTunerConfig.Load(file);
    }

    /// <summary>Creates the press from a configuration already in memory (<paramref name="name"/> appears in its text form).</summary>
    public KvTunerPress(KvTunerConfig config, string name)
    {
        Config = config ?? throw new ArgumentNullException(nameof(config));
        File = name ?? throw new ArgumentNullException(nameof(name));
    }

    /// <summary>The configuration file.</summary>
    public string File { get; }

    /// <summary>The per-layer pairs.</summary>
    public KvTunerConfig Config { get; }

    /// <inheritdoc />
    public string Text => $"kvtuner:file={File}";

    /// <inheritdoc />
    /// <exception cref="KvSharpException">The configuration's layer count differs from the cache's.</exception>
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        Config.CheckLayers(context.Layers, File);
        for (int l = 0; l < context.Layers; l++)
        {
            if (context.Cache.SharedLayerSource(l) >= 0) continue;
            FormatPair? pair = Config.Layers[l].Formats;
            for (int h = 0; h < context.KvHeads; h++)
                PrecisionTiers.Apply(context, l, h, new byte[context.Cache.Positions(l, h).Count], [pair]);
        }
    }
}
