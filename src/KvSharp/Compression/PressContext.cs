using KvSharp.Cache.Paged;
using KvSharp.Generation;
using KvSharp.Generation.Chat;
using KvSharp.Models;
using KvSharp.Tokenization;

namespace KvSharp.Compression;

/// <summary>What a press may use: the model, the prefilled cache, the tokens it holds and what must be protected.</summary>
public sealed class PressContext
{
    /// <summary>Creates a context over <paramref name="cache"/>, which holds <paramref name="tokens"/> at positions 0..Length-1.</summary>
    /// <exception cref="ArgumentException">The token count differs from the cache's length.</exception>
    public PressContext(Transformer model, PagedKvCache cache, IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Count != cache.Length)
            throw new ArgumentException($"the cache holds {cache.Length} positions but {tokens.Count} tokens were given", nameof(tokens));
        Model = model;
        Cache = cache;
        Tokens = tokens;
    }

    /// <summary>A context with the model's tokenizer and chat template (scorers that write prompts, e.g. KVzip, need them).</summary>
    public static PressContext For(LanguageModel model, PagedKvCache cache, IReadOnlyList<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        return new PressContext(model.Transformer, cache, tokens) { Tokenizer = model.Tokenizer, ChatTemplate = model.ChatTemplate };
    }

    /// <summary>The forward pass (scorers that observe attention run tokens through it).</summary>
    public Transformer Model { get; }

    /// <summary>The cache to compress.</summary>
    public PagedKvCache Cache { get; }

    /// <summary>The tokens at positions 0..Cache.Length-1.</summary>
    public IReadOnlyList<int> Tokens { get; }

    /// <summary>Leading positions never evicted and outside every budget (BOS, system prompt: the attention sink).</summary>
    public int ProtectedPrefix
    {
        get;
        init => field = value >= 0 && value <= Tokens.Count ? value
            : throw new ArgumentOutOfRangeException(nameof(ProtectedPrefix), $"protected prefix {value} outside 0..{Tokens.Count}");
    }

    /// <summary>
    /// The question, in query-aware mode only: scorers that observe queries use it as their observation window.
    /// Null (the default) = query-agnostic: the compressed cache must serve any later question.
    /// </summary>
    public IReadOnlyList<int>? Question { get; init; }

    /// <summary>The tokenizer, for scorers that write prompts; null when the press runs on a bare transformer.</summary>
    public ITokenizer? Tokenizer { get; init; }

    /// <summary>The model's chat template, for scorers that write prompts (KVzip's repeat request); null = plain text.</summary>
    public IChatTemplate? ChatTemplate { get; init; }

    /// <summary>Layers of the cache.</summary>
    public int Layers => Cache.Layers;

    /// <summary>KV heads per layer.</summary>
    public int KvHeads => Cache.KvHeads;

    /// <summary>Empty scores shaped for this cache.</summary>
    public HeadScores NewScores() => new(Layers, KvHeads);
}
