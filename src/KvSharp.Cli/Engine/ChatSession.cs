using KvSharp.Cache;
using KvSharp.Cli.Commands;
using KvSharp.Generation;
using KvSharp.Generation.Chat;

namespace KvSharp.Cli.Engine;

/// <summary>
/// A conversation over one KV cache. Each turn formats the whole conversation with the template,
/// keeps the cached tokens it shares with the previous turn (rolling the cache back to the common
/// prefix) and runs only the new tokens, so long conversations don't re-prefill their history.
/// A cache loaded with --load-cache is a fixed prefix the conversation follows.
/// </summary>
internal sealed class ChatSession : IChatSession
{
    private readonly LanguageModel _model;
    private readonly IKvCache _cache;
    private readonly int _context;
    private readonly ChatRequest _request;
    private readonly EngineFacade _engine;
    private readonly List<int> _cached = new(); // tokens after the loaded prefix
    private readonly int _prefix; // tokens of a --load-cache context the conversation follows

    public ChatSession(LanguageModel model, IChatTemplate template, int context, ChatRequest request, EngineFacade engine)
    {
        _model = model;
        Template = template;
        _context = context;
        _request = request;
        _engine = engine;
        _cache = engine.CreateCache(request.Model, model, context, paged: request.Options.DecodeCompression != null);
        _prefix = _cache.Length;
    }

    public IChatTemplate Template { get; }

    public string Respond(IReadOnlyList<ChatMessage> conversation, Action<string> onText, CancellationToken cancellation)
    {
        var messages = _request.SystemPrompt is { } system && (conversation.Count == 0 || conversation[0].Role != "system")
            ? [ChatMessage.System(system), .. conversation]
            : conversation;
        var tokens = _model.Encode(Template.Format(messages, addGenerationPrompt: true), addBos: _prefix == 0 && !Template.IncludesBos);

        int common = 0;
        while (common < _cached.Count && common < tokens.Length - 1 && _cached[common] == tokens[common]) common++;
        _cache.Truncate(_prefix + common);
        _cached.RemoveRange(common, _cached.Count - common);

        var options = _request.Options with { StopStrings = [.. _request.Options.StopStrings, .. Template.EndOfTurnMarkers] };
        var result = _model.CreateGenerator().Generate(tokens[common..], _cache, _context, options, onText, cancellation);
        _cached.AddRange(tokens[common..]);
        _cached.AddRange(result.TokenIds);
        if (_cache.Length != _prefix + _cached.Count) // the last sampled token was never run through the model
        {
            _cache.Truncate(Math.Min(_cache.Length, _prefix + _cached.Count));
            _cached.RemoveRange(_cache.Length - _prefix, _prefix + _cached.Count - _cache.Length);
        }
        _engine.SaveCache(_request.Model, _model, _cache);
        if (_request.ShowCache) _engine.ReportRun(result, _cache, _model);
        cancellation.ThrowIfCancellationRequested();
        return result.Text;
    }

    public void Dispose()
    {
        _cache.Dispose();
        _model.Dispose();
    }
}
