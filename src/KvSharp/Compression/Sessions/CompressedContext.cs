using System.Diagnostics;
using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Recall;
using KvSharp.Generation;

namespace KvSharp.Compression.Sessions;

/// <summary>
/// A context prefilled once into a paged KV cache, compressed once, and then asked many questions (the kvpress /
/// SCBench use). Each question is appended to a copy-on-write fork of the compressed cache, answered, and the fork is
/// dropped, so every question sees exactly the same compressed context and question positions continue from the
/// context's length (eviction never changes positions). In query-aware mode each question compresses its own fork
/// with the question as the observation window instead. With <see cref="CompressedContextOptions.Recall"/> the
/// compressed cache is clustered once (ClusterKV) and questions are answered over that recall view, rolled back to
/// the context afterwards; such questions run one at a time.
/// </summary>
public sealed class CompressedContext : IDisposable
{
    private readonly LanguageModel _model;
    private readonly PagedKvCache _cache;
    private readonly int[] _tokens;
    private readonly CompressedContextOptions _options;
    private readonly int _maxTokens;
    private readonly object _recallGate = new();
    private ClusterKvCache? _recall; // over a fork of _cache, when query-agnostic with recall

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
            if (!options.QueryAware) session.AttachRecall();
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
        return Compress(new ContextPress { Press = press }, queryAware);
    }

    /// <summary>
    /// As <see cref="Compress(IKvPress, bool)"/>, with ClusterKV recall (<see cref="ContextPress.Recall"/>) over the
    /// compressed fork when given.
    /// </summary>
    /// <exception cref="ArgumentException">Neither a press nor recall is given.</exception>
    public CompressedContext Compress(ContextPress press, bool queryAware = false)
    {
        ArgumentNullException.ThrowIfNull(press);
        if (press.Press == null && press.Recall == null) throw new ArgumentException("give a press, ClusterKV recall or both", nameof(press));
        var fork = _cache.Fork();
        try
        {
            var session = new CompressedContext(_model, fork, _tokens, _options with { Press = press.Press, Recall = press.Recall, QueryAware = queryAware }, _maxTokens)
            {
                PrefillTime = PrefillTime,
                BytesBeforeCompression = fork.ByteCount,
                PoolBytesBeforeCompression = fork.PoolLiveBytes,
            };
            try
            {
                if (!queryAware)
                {
                    if (press.Press != null)
                    {
                        var sw = Stopwatch.StartNew();
                        press.Press.Compress(session.NewPressContext(fork, null));
                        session.CompressTime = sw.Elapsed;
                    }
                    session.AttachRecall();
                }
                return session;
            }
            catch
            {
                session._recall?.Dispose();
                throw;
            }
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

    /// <summary>Time of ClusterKV's clustering of the compressed cache (zero when query-aware or without recall).</summary>
    public TimeSpan RecallTime { get; private set; }

    /// <summary>
    /// The ClusterKV view questions are answered over (query-agnostic sessions with recall; else null). It keeps every
    /// byte of <see cref="Cache"/> plus a float32 copy (<see cref="ClusterKvCache.CopyBytes"/>); do not mutate it.
    /// </summary>
    public ClusterKvCache? Recall => _recall;

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
        if (_options.Recall != null && options.DecodeCompression != null)
            throw new KvSharpException($"a decode press ({options.DecodeCompression.Text}) cannot run under clusterkv recall: ClusterKV answers from its own copy of every token and would not see the evictions; use one or the other");
        if (_recall != null)
        {
            // One shared recall view (clustered once): each question runs on it and is rolled back to the context.
            lock (_recallGate)
            {
                try { return Answer(question, _recall, _recall, TimeSpan.Zero, _cache.ByteCount, options, onText, cancellation); }
                finally { _recall.Truncate(_tokens.Length); }
            }
        }
        using var fork = _cache.Fork();
        var compress = TimeSpan.Zero;
        if (_options.QueryAware && _options.Press != null)
        {
            var sw = Stopwatch.StartNew();
            _options.Press.Compress(NewPressContext(fork, question));
            compress = sw.Elapsed;
        }
        long bytes = fork.ByteCount;
        if (_options.Recall is not { } recall) return Answer(question, fork, null, compress, bytes, options, onText, cancellation);
        var clock = Stopwatch.StartNew();
        using var view = ClusterKvCache.Attach(fork, _model.Config.NumHeads, recall);
        return Answer(question, view, view, compress + clock.Elapsed, bytes, options, onText, cancellation);
    }

    /// <summary>Generates the answer over <paramref name="cache"/>; with <paramref name="recall"/>, reports what its decode steps read.</summary>
    private ContextAnswer Answer(IReadOnlyList<int> question, IKvCache cache, ClusterKvCache? recall, TimeSpan compress, long bytes,
        GenerationOptions options, Action<string>? onText, CancellationToken cancellation)
    {
        long steps = recall?.DecodeSteps ?? 0, selected = recall?.SelectedTokens ?? 0;
        // What full attention would read per (layer, KV head) before the question, and the float copy, as answering starts.
        long stored = recall?.Inner.StoredTokens ?? 0, copy = recall?.CopyBytes ?? 0;
        var result = _model.CreateGenerator().Generate(question, cache, _maxTokens, options, onText, cancellation);
        if (recall == null) return new ContextAnswer(result, compress, bytes);
        int heads = recall.Inner.Layers * recall.Inner.KvHeads;
        steps = recall.DecodeSteps - steps;
        // Decode step k (from 0) attends with the question and k + 1 answer tokens appended (its own included).
        double full = (double)stored / heads + question.Count + (steps + 1) / 2.0;
        return new ContextAnswer(result, compress, bytes)
        {
            Recall = new RecallStatistics(steps, steps == 0 ? double.NaN : (double)(recall.SelectedTokens - selected) / (steps * heads), full, copy),
        };
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

    /// <summary>Clusters a fork of the (compressed) cache for ClusterKV recall, when the options ask for it.</summary>
    private void AttachRecall()
    {
        if (_options.Recall is not { } options) return;
        var sw = Stopwatch.StartNew();
        var fork = _cache.Fork();
        try { _recall = ClusterKvCache.Attach(fork, _model.Config.NumHeads, options, ownsInner: true); }
        catch
        {
            fork.Dispose();
            throw;
        }
        RecallTime = sw.Elapsed;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _recall?.Dispose();
        _cache.Dispose();
    }
}
