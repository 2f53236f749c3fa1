using KvSharp.Cache.Blocks;

namespace KvSharp.Cache.Paged;

/// <summary>Storage formats and block geometry of a <see cref="PagedKvCache"/>.</summary>
public sealed record PagedKvCacheOptions
{
    /// <summary>Format of key blocks (quantized formats are stored per channel, one group per block, as KIVI does).</summary>
    public KvFormat KeyFormat { get; init; } = KvFormat.F16;

    /// <summary>Format of value blocks (quantized formats are stored per token in groups of <see cref="ValueChannelGroup"/> channels).</summary>
    public KvFormat ValueFormat { get; init; } = KvFormat.F16;

    /// <summary>Tokens per block (default 32).</summary>
    public int BlockTokens { get; init; } = BlockLayout.DefaultTokens;

    /// <summary>Channels per quantization group of per-token value blocks (default 32, capped at the head dimension).</summary>
    public int ValueChannelGroup { get; init; } = BlockLayout.DefaultChannelGroup;

    /// <summary>
    /// KIVI residual: the newest tokens stay in a float32 buffer per head until max(ResidualTokens, BlockTokens)
    /// of them are collected, then every full block's worth is encoded at once. 0 (default) encodes each block as
    /// soon as it is full. A partial block's worth always stays in float: per-channel quantized keys share their
    /// parameters across the block's tokens, so encoding a partial block would fix them before the block is complete.
    /// </summary>
    public int ResidualTokens { get; init; }

    /// <summary>Most tokens (positions) the cache accepts.</summary>
    public int MaxTokens { get; init; } = 4096;

    /// <summary>Tokens the float residual collects before full blocks are encoded.</summary>
    internal int FlushThreshold => Math.Max(ResidualTokens, BlockTokens);

    /// <summary>Checks the options against a head dimension.</summary>
    /// <exception cref="KvSharpException">An option is out of range; the message names it.</exception>
    internal (BlockLayout Keys, BlockLayout Values) Layouts(int headDim)
    {
        if (BlockTokens < 1 || BlockTokens > 4096) throw new KvSharpException($"PagedKvCacheOptions.BlockTokens must be in 1..4096, got {BlockTokens}");
        if (ResidualTokens < 0) throw new KvSharpException($"PagedKvCacheOptions.ResidualTokens must be ≥ 0, got {ResidualTokens}");
        if (MaxTokens < 1) throw new KvSharpException($"PagedKvCacheOptions.MaxTokens must be ≥ 1, got {MaxTokens}");
        try
        {
            return (BlockLayout.ForKeys(KeyFormat, headDim, BlockTokens),
                BlockLayout.ForValues(ValueFormat, headDim, BlockTokens, ValueChannelGroup));
        }
        catch (KvSharpException e)
        {
            throw new KvSharpException($"PagedKvCacheOptions (keys {KeyFormat}, values {ValueFormat}, {BlockTokens} tokens, value group {ValueChannelGroup}, head dimension {headDim}): {e.Message}");
        }
    }
}
