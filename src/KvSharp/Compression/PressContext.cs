using KvSharp.Cache;
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
        // A model without a chat template of its own (base models) gets plain-text prompts, not a guessed template.
        return new PressContext(model.Transformer, cache, tokens)
        {
            Tokenizer = model.Tokenizer,
            ChatTemplate = model.ChatTemplateText != null ? model.ChatTemplate : null,
        };
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

    /// <summary>
    /// Runs <paramref name="tokens"/> through the model on a copy-on-write fork of the cache with attention statistics
    /// on, and returns them; the cache itself is untouched. With <paramref name="rewindTo"/> the fork is first cut back
    /// to that length, so context tokens can be run again at their own positions (they recompute the same keys and
    /// values): e.g. SnapKV's window is <c>Observe(Tokens[T-w..T], rewindTo: T-w)</c>. Statistics cover the tokens
    /// the fork stores when the run starts; by default every run query counts.
    /// </summary>
    public AttentionStatistics Observe(ReadOnlySpan<int> tokens, GroupFold fold = GroupFold.Max, int? rewindTo = null, int? firstQueryPosition = null)
    {
        if (tokens.IsEmpty) throw new ArgumentException("no tokens to observe", nameof(tokens));
        using var fork = Cache.Fork();
        if (rewindTo is { } r) fork.Truncate(r);
        fork.BeginStatistics(new AttentionStatisticsRequest(firstQueryPosition ?? fork.Length, fold));
        Model.Forward(tokens, fork); // a throw disposes the fork, collection and all
        return fork.EndStatistics();
    }

    /// <summary>
    /// Spreads per-covered-token <paramref name="values"/> of <paramref name="statistics"/> for (layer, KV head) over
    /// the cache's stored tokens of that head (matched by position); stored tokens the statistics do not cover get
    /// <paramref name="uncovered"/>.
    /// </summary>
    public float[] Align(AttentionStatistics statistics, int layer, int kvHead, ReadOnlySpan<float> values, float uncovered)
    {
        ArgumentNullException.ThrowIfNull(statistics);
        var stored = Cache.Positions(layer, kvHead);
        var covered = statistics.Positions(layer, kvHead);
        var result = new float[stored.Count];
        for (int i = 0, j = 0; i < result.Length; i++)
        {
            while (j < covered.Count && covered[j] < stored[i]) j++;
            result[i] = j < covered.Count && covered[j] == stored[i] ? values[j] : uncovered;
        }
        return result;
    }
}
