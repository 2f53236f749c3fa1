using KvSharp.Cache.Paged;
using KvSharp.Generation;

namespace KvSharp.Evaluation.Running;

/// <summary>What a compressor gets once the context is in the cache.</summary>
/// <param name="Model">The model (presses run queries through its transformer; KVzip writes prompts with its tokenizer).</param>
/// <param name="Cache">The cache holding exactly the context.</param>
/// <param name="ContextTokens">The context's tokens, BOS included.</param>
/// <param name="ProtectedPrefix">Leading tokens a press must keep (BOS: the attention sink).</param>
/// <param name="QuestionTokens">The question's tokens when compression may depend on it (one query asked once); null for query-agnostic compression.</param>
public sealed record CompressionInput(LanguageModel Model, PagedKvCache Cache, IReadOnlyList<int> ContextTokens, int ProtectedPrefix, IReadOnlyList<int>? QuestionTokens);

/// <summary>One compression step of an evaluation cell: a press at a keep ratio, or nothing (the full cache).</summary>
public interface ICacheCompressor
{
    /// <summary>The text form reported in results (e.g. <c>none</c>, <c>kvzip:keep=0.25</c>).</summary>
    string Name { get; }

    /// <summary>Compresses <see cref="CompressionInput.Cache"/> in place.</summary>
    void Compress(CompressionInput input);
}

/// <summary>Builds the compressor of a press name and keep ratio (the sweep's two axes).</summary>
public interface ICompressorFactory
{
    /// <summary>
    /// The compressor of <paramref name="press"/> keeping <paramref name="keepRatio"/> of the context; a press the
    /// factory does not know is a <see cref="KvSharpException"/> naming it.
    /// </summary>
    ICacheCompressor Create(string press, double keepRatio);

    /// <summary>Whether <paramref name="press"/> is the full cache, which has one cell (keep 1) whatever ratios are swept.</summary>
    bool IsFullCache(string press);

    /// <summary>
    /// Whether <paramref name="press"/> takes the sweep's keep ratios; one that does not (the full cache, a quantizer,
    /// a dynamic budget) has one cell, and <see cref="Create"/> ignores the ratio.
    /// </summary>
    bool TakesKeepRatio(string press);
}

/// <summary>The full cache: leaves it as it is.</summary>
public sealed class NoCompression : ICacheCompressor
{
    /// <summary>The one instance.</summary>
    public static NoCompression Instance { get; } = new();

    /// <inheritdoc />
    public string Name => "none";

    /// <inheritdoc />
    public void Compress(CompressionInput input) { }
}

/// <summary>The factory that knows only the full cache (<c>none</c>, alias <c>full</c>); presses plug in by wrapping it.</summary>
public class FullCacheFactory : ICompressorFactory
{
    /// <inheritdoc />
    public virtual ICacheCompressor Create(string press, double keepRatio)
    {
        if (IsFullCache(press)) return NoCompression.Instance;
        throw new KvSharpException($"press '{press}': unknown (known: none)");
    }

    /// <inheritdoc />
    public bool IsFullCache(string press) => press.Trim().ToLowerInvariant() is "none" or "full";

    /// <inheritdoc />
    public virtual bool TakesKeepRatio(string press) => !IsFullCache(press);
}
