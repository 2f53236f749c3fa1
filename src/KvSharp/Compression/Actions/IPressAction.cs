namespace KvSharp.Compression.Actions;

/// <summary>What happens to the tokens a budget did not keep (the "action" of a press): evict, quantize, share.</summary>
public interface IPressAction
{
    /// <summary>Canonical name.</summary>
    string Name { get; }

    /// <summary>Applies to (layer, KV head): <paramref name="keep"/> has one flag per stored token, in <c>Positions</c> order.</summary>
    void Apply(PressContext context, int layer, int kvHead, ReadOnlySpan<bool> keep);
}
