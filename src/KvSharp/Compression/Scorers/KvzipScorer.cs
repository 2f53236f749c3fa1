using System.Globalization;
using KvSharp.Cache;
using KvSharp.Generation.Chat;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// KVzip (query-agnostic, context reconstruction). The context after the protected prefix (the system prompt, never
/// evicted) is split into chunks of <see cref="Chunk"/> tokens. For each chunk the model is shown a request to repeat
/// it followed by the chunk's own tokens (teacher forcing) — chunk 0: "\n\nRepeat the previous context exactly.",
/// chunk i &gt; 0: "\n\nRepeat the part of the previous context exactly, starting with " + the last 8 tokens of chunk
/// i−1 — closed by the chat template's end of user turn and assistant header (plain text: a newline). The run
/// attends the whole stored cache and causally itself; a chunk token's score is the maximum, over every query of its
/// chunk's run and over the query heads of its KV head, of the softmax probability it receives. The repeat run's
/// keys and values are discarded (it runs on a fork). The run is placed after the context, so when the context
/// nearly fills the cache's positions the chunk shrinks to what still fits (positions stay within the model's context). Cost: one extra pass over about the context's length, each
/// chunk's queries attending the whole context: linear in the context length for a fixed chunk size.
/// </summary>
public sealed class KvzipScorer : IScorer
{
    /// <summary>The first chunk's repeat request.</summary>
    public const string FirstPrompt = "\n\nRepeat the previous context exactly.";

    /// <summary>A later chunk's repeat request, followed by the previous chunk's last <see cref="OverlapTokens"/> tokens.</summary>
    public const string NextPrompt = "\n\nRepeat the part of the previous context exactly, starting with ";

    /// <summary>Tokens of the previous chunk quoted in a later chunk's request.</summary>
    public const int OverlapTokens = 8;

    /// <summary>Creates the scorer.</summary>
    /// <exception cref="KvSharpException">The chunk size is below 1.</exception>
    public KvzipScorer(int chunk = 2000, bool plus = false)
    {
        if (chunk < 1) throw new KvSharpException($"kvzip: chunk must be ≥ 1, got {chunk}");
        Chunk = chunk;
        Plus = plus;
    }

    /// <summary>Context tokens per scoring run.</summary>
    public int Chunk { get; }

    /// <summary>
    /// KVzip+: each attention weight is multiplied by ‖W_o^h v_t‖ / ‖x_q‖ before the max (how much the token's value
    /// moves the residual stream relative to its size; see <see cref="KvzipPlusRun"/>).
    /// </summary>
    public bool Plus { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"kvzip:chunk={Chunk}") + (Plus ? ",plus=true" : "");

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        var tokenizer = context.Tokenizer ?? throw new KvSharpException("kvzip needs the model's tokenizer to write its repeat request: create the press context with PressContext.For(model, ...)");
        var tokens = context.Tokens.ToArray();
        int length = tokens.Length;
        var scores = context.NewScores();
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
                scores[l, h] = new float[context.Cache.Positions(l, h).Count];
        var suffix = tokenizer.Encode(TurnSuffix(context.ChatTemplate), addSpecial: false);
        var first = tokenizer.Encode(FirstPrompt, addSpecial: false);
        var next = tokenizer.Encode(NextPrompt, addSpecial: false);
        // The run sits after the context: keep it inside the cache's positions (the model's context), shrinking the
        // chunk when the context nearly fills them.
        int room = context.Cache.Options.MaxTokens - length - Math.Max(first.Length, next.Length + OverlapTokens) - suffix.Length;
        int chunk = Math.Min(Chunk, room);
        if (chunk < 1 && length > context.ProtectedPrefix)
            throw new KvSharpException($"kvzip: the cache holds {context.Cache.Options.MaxTokens} positions and the context {length}: no room after it for the repeat run (allow at least {length - room + 1} positions)");
        // KVzip+'s value weights depend on the stored values only: once for every run.
        var valueNorms = Plus ? KvzipPlusValueNorms.Compute(context) : null;
        for (int start = context.ProtectedPrefix; start < length; start += chunk)
        {
            int end = Math.Min(length, start + chunk);
            var request = start == context.ProtectedPrefix
                ? first
                : [.. next, .. tokens[Math.Max(context.ProtectedPrefix, start - OverlapTokens)..start]];
            int[] run = [.. request, .. suffix, .. tokens[start..end]];
            if (valueNorms != null)
            {
                KvzipPlusRun.Score(context, valueNorms, run, start, end, scores);
                continue;
            }
            var stats = context.Observe(run, GroupFold.Max);
            for (int l = 0; l < context.Layers; l++)
                for (int h = 0; h < context.KvHeads; h++)
                {
                    var positions = context.Cache.Positions(l, h);
                    var max = context.Align(stats, l, h, stats.MaxProbability(l, h), 0);
                    var s = scores[l, h];
                    for (int i = 0; i < s.Length; i++)
                        if (positions[i] >= start && positions[i] < end) s[i] = max[i];
                }
        }
        return scores;
    }

    /// <summary>
    /// What closes the user's repeat request and opens the assistant's answer: the template's text after a user
    /// message (e.g. ChatML "&lt;|im_end|&gt;\n&lt;|im_start|&gt;assistant\n"), or a newline without a template.
    /// </summary>
    public static string TurnSuffix(IChatTemplate? template)
    {
        if (template == null) return "\n";
        const string marker = "\u0001KVZIP\u0001";
        string formatted = template.Format([ChatMessage.User(marker)], addGenerationPrompt: true);
        int at = formatted.IndexOf(marker, StringComparison.Ordinal);
        return at < 0 ? "\n" : formatted[(at + marker.Length)..];
    }
}
