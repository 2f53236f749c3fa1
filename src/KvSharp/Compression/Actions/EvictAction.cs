namespace KvSharp.Compression.Actions;

/// <summary>Drops the tokens not kept; their blocks go back to the pool (the cache's bytes really fall).</summary>
public sealed class EvictAction : IPressAction
{
    /// <summary>The shared instance.</summary>
    public static EvictAction Instance { get; } = new();

    /// <inheritdoc />
    public string Name => "evict";

    /// <inheritdoc />
    public void Apply(PressContext context, int layer, int kvHead, ReadOnlySpan<bool> keep)
    {
        var evict = new bool[keep.Length];
        bool any = false;
        for (int i = 0; i < keep.Length; i++) any |= evict[i] = !keep[i];
        if (any) context.Cache.Evict(layer, kvHead, evict);
    }
}
