using KvSharp.Cache;
using KvSharp.Compression.Recall;

namespace KvSharp.Compression.Sessions;

/// <summary>How a <see cref="CompressedContext"/> stores and compresses its context.</summary>
public sealed record CompressedContextOptions
{
    /// <summary>Block formats of the paged cache (default F16 keys and values, as llama.cpp stores them).</summary>
    public KvCacheSpec Cache { get; init; } = KvCacheSpec.Parse("f16");

    /// <summary>Positions the cache holds: context + the longest question and answer (default: the model's context).</summary>
    public int? MaxTokens { get; init; }

    /// <summary>The press applied once after prefill (query-agnostic) or per question (query-aware); null = no compression.</summary>
    public IKvPress? Press { get; init; }

    /// <summary>
    /// ClusterKV recall while answering (null = none): the (pressed) cache is clustered once and every decode step
    /// attends only the sinks, the recent tokens and the best clusters within the budget; multi-token passes (the
    /// question) attend everything. Nothing is evicted by it: the cache keeps every byte it had.
    /// </summary>
    public ClusterKvOptions? Recall { get; init; }

    /// <summary>
    /// False (default): the context is compressed once without seeing any question, and every question reuses it.
    /// True: each question compresses its own copy of the prefilled cache with the question as the observation
    /// window (what SnapKV-style methods assume; such a cache serves only that question).
    /// </summary>
    public bool QueryAware { get; init; }

    /// <summary>Leading context tokens never evicted (system prompt); null = the BOS token if the tokenizer adds one, else none.</summary>
    public int? ProtectedPrefix { get; init; }
}
