using System.Diagnostics;
using KvSharp.Cache.Paged;
using KvSharp.Generation;

namespace KvSharp.Compression.Sessions;

/// <summary>
/// A context prefilled once into a paged KV cache, compressed once, and then asked many questions (the kvpress /
/// SCBench use). Each question is appended to a copy-on-write fork of the compressed cache, answered, and the fork is
/// dropped, so every question sees exactly the same compressed context and question positions continue from the
/// context's length (eviction never changes positions). In query-aware mode each question compresses its own fork
/// with the question as the observation window instead.
/// </summary>
public sealed class CompressedContext : IDisposable
{
    private readonly LanguageModel _model;
    private readonly PagedKvCache _cache;
    private readonly int[] _tokens;
    private readonly CompressedContextOptions _options;
    private readonly int _maxTokens;

    private CompressedContext(LanguageModel model, PagedKvCache cache, int[] tokens, CompressedContextOptions options, int maxTokens)
    {
        _model = model; _cache = cache; _tokens = tokens; _options = options; _maxTokens = maxTokens;
    }

    /// <summary>
    /// Prefills <paramref name="context"/> (token ids, BOS included if wanted) and, unless query-aware, compresses it
    /// with <see cref="CompressedContextOptions.Press"/>.
    /// </summary>
    /// <exception cref="KvSharpException">The context does not fit, or the press fails on bad input.</exception>
    public static CompressedContext Create(LanguageModel model, IReadOnlyList<int> context, CompressedContextOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(context);
        options ??= new CompressedContextOptions();
        if (context.Count == 0) throw new KvSharpException("the context is empty: give at least one token");
        int max = options.MaxTokens ?? model.Config.MaxContext;
        if (context.Count >= max)
            throw new KvSharpException($"the context has {context.Count} tokens but the cache holds {max} positions (room is needed for the questions)");
        var cache = options.Cache.Create(model.Config, max);
        try
        {
            var tokens = context.ToArray();
            var sw = Stopwatch.StartNew();
            model.Transformer.Forward(tokens, cache);
            var session = new CompressedContext(model, cache, tokens, options, max)
            {
                PrefillTime = sw.Elapsed,
                BytesBeforeCompression = cache.ByteCount,
                PoolBytesBeforeCompression = cache.PoolLiveBytes,
            };
            if (!options.QueryAware && options.Press != null)
            {
                sw.Restart();
                options.Press.Compress(session.NewPressContext(cache, null));
                session.CompressTime = sw.Elapsed;
            }
            return session;
        }
        catch
        {
            cache.Dispose();
            throw;
        }
    }

    /// <summary>Tokenizes <paramref name="context"/> (with BOS) and calls <see cref="Create(LanguageModel, IReadOnlyList{int}, CompressedContextOptions?)"/>.</summary>
    public static CompressedContext Create(LanguageModel model, string context, CompressedContextOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        return Create(model, model.Encode(context), options);
    }

    /// <summary>
    /// A second session over the same prefill: a copy-on-write fork of this session's cache compressed with
    /// <paramref name="press"/> (or, query-aware, compressed per question). Compare a compressed context with the full
    /// one without prefilling twice; blocks both still hold are stored once (<see cref="PagedKvCache.PoolLiveBytes"/>).
    /// Dispose it independently.
    /// </summary>
    public CompressedContext Compress(IKvPress press, bool queryAware = false)
    {
        ArgumentNullException.ThrowIfNull(press);
        var fork = _cache.Fork();
        try
        {
            var session = new CompressedContext(_model, fork, _tokens, _options with { Press = press, QueryAware = queryAware }, _maxTokens)
            {
                PrefillTime = PrefillTime,
                BytesBeforeCompression = fork.ByteCount,
                PoolBytesBeforeCompression = fork.PoolLiveBytes,
            };
            if (!queryAware)
            {
                var sw = Stopwatch.StartNew();
                press.Compress(session.NewPressContext(fork, null));
                session.CompressTime = sw.Elapsed;
            }
            return session;
        }
        catch
        {
            fork.Dispose();
            throw;
        }
    }

    /// <summary>The context's tokens.</summary>
    public IReadOnlyList<int> Tokens => _tokens;

    /// <summary>The (compressed, unless query-aware) cache every question starts from. Do not mutate it.</summary>
    public PagedKvCache Cache => _cache;

    /// <summary>Time of the prefill.</summary>
    public TimeSpan PrefillTime { get; private init; }

    /// <summary>Time of the query-agnostic compression (zero when query-aware or without a press).</summary>
    public TimeSpan CompressTime { get; private set; }

    /// <summary>Cache bytes after prefill, before compression.</summary>
    public long BytesBeforeCompression { get; private init; }

    /// <summary>Pool bytes (blocks really allocated) after prefill, before compression.</summary>
    public long PoolBytesBeforeCompression { get; private init; }

    /// <summary>Leading context tokens presses never evict.</summary>
    public int ProtectedPrefix => Math.Min(_tokens.Length, _options.ProtectedPrefix
        ?? (_model.Tokenizer.BosId is { } bos && _tokens[0] == bos ? 1 : 0));

    /// <summary>
    /// Answers <paramref name="question"/> (token ids, appended after the context) from a fork of the compressed
    /// cache; the fork is dropped afterwards, so the next question starts from the same cache.
    /// </summary>
    public ContextAnswer Ask(IReadOnlyList<int> question, GenerationOptions options, Action<string>? onText = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(question);
        ArgumentNullException.ThrowIfNull(options);
        using var fork = _cache.Fork();
        var compress = TimeSpan.Zero;
        if (_options.QueryAware && _options.Press != null)
        {
            var sw = Stopwatch.StartNew();
            _options.Press.Compress(NewPressContext(fork, question));
            compress = sw.Elapsed;
        }
        long bytes = fork.ByteCount;
        var result = _model.CreateGenerator().Generate(question, fork, _maxTokens, options, onText, cancellation);
        return new ContextAnswer(result, compress, bytes);
    }

    /// <summary>Tokenizes <paramref name="question"/> (no BOS: it continues the context) and answers it.</summary>
    public ContextAnswer Ask(string question, GenerationOptions options, Action<string>? onText = null, CancellationToken cancellation = default) =>
        Ask(_model.Encode(question, addBos: false), options, onText, cancellation);

    private PressContext NewPressContext(PagedKvCache cache, IReadOnlyList<int>? question) =>
        new(_model.Transformer, cache, _tokens)
        {
            ProtectedPrefix = ProtectedPrefix,
            Question = question,
            Tokenizer = _model.Tokenizer,
            ChatTemplate = _model.ChatTemplateText != null ? _model.ChatTemplate : null, // base models: plain text
        };

    /// <inheritdoc />
    public void Dispose() => _cache.Dispose();
}
