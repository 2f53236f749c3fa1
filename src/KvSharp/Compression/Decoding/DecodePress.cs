using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Generation;

namespace KvSharp.Compression.Decoding;

/// <summary>
/// A press applied while generating: after every <see cref="Every"/>-th decode step, each (layer, KV head) holding more
/// than <see cref="Tokens"/> candidate tokens (stored tokens at positions ≥ <see cref="Protect"/>) keeps its
/// <see cref="Tokens"/> best-scoring candidates (+∞ scores always kept, counted in the budget; ties to the later token)
/// and evicts the rest, so the cache never holds more than <see cref="Tokens"/> + <see cref="Every"/> − 1 candidates per
/// head during a generation. Needs a <see cref="PagedKvCache"/> (it evicts and reads attention statistics), or the device's
/// paged cache through <c>CudaDecodePresses.Start</c>.
/// </summary>
public abstract class DecodePress : IDecodeCompression
{
    /// <summary>Checks and stores the schedule shared by every decode press.</summary>
    /// <exception cref="KvSharpException">A value is out of range (the message names the press and the parameter).</exception>
    protected DecodePress(string name, int tokens, int every, int protect)
    {
        if (tokens < 1) throw new KvSharpException($"{name} (decode): tokens must be ≥ 1, got {tokens}");
        if (every < 1) throw new KvSharpException($"{name} (decode): every must be ≥ 1, got {every}");
        if (protect < 0) throw new KvSharpException($"{name} (decode): protect must be ≥ 0, got {protect}");
        Tokens = tokens; Every = every; Protect = protect;
    }

    /// <summary>Candidate tokens each (layer, KV head) keeps after a compression step.</summary>
    public int Tokens { get; }

    /// <summary>Decode steps between compression steps.</summary>
    public int Every { get; }

    /// <summary>Leading positions never evicted and outside the budget (BOS: the attention sink).</summary>
    public int Protect { get; }

    /// <inheritdoc />
    public abstract string Text { get; }

    /// <inheritdoc />
    public IDecodeSession Start(IKvCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        var paged = cache as PagedKvCache
            ?? throw new KvSharpException($"decode press '{Text}' needs the paged KV cache (it evicts tokens and reads attention statistics), not a {cache.GetType().Name}");
        return CreateSession(new PagedDecodeCache(paged));
    }

    /// <summary>The method's state for one generation over <paramref name="cache"/> (the CPU's paged cache or the device's).</summary>
    internal abstract DecodePressSession CreateSession(IDecodeCache cache);
}
