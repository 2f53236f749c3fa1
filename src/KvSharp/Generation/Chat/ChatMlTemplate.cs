using System.Text;

namespace KvSharp.Generation.Chat;

/// <summary>
/// ChatML, used by Qwen2/2.5/3 and SmolLM2: <c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n</c> per turn and
/// <c>&lt;|im_start|&gt;assistant\n</c> as the generation prompt. The tokenizer adds no BOS for these models.
/// </summary>
public sealed class ChatMlTemplate : IChatTemplate
{
    private const string Start = "<|im_start|>";
    private const string End = "<|im_end|>";

    /// <summary>
    /// Creates the template. <paramref name="defaultSystemPrompt"/> is inserted when a conversation does not begin
    /// with a system turn (SmolLM2's and Qwen2.5's templates do this). <paramref name="stripReasoningFromHistory"/>
    /// drops the "&lt;think&gt;…&lt;/think&gt;" part of assistant turns that precede the last user turn, as Qwen3's
    /// template does.
    /// </summary>
    public ChatMlTemplate(string? defaultSystemPrompt = null, bool stripReasoningFromHistory = false)
    {
        DefaultSystemPrompt = defaultSystemPrompt;
        StripReasoningFromHistory = stripReasoningFromHistory;
    }

    /// <summary>The system prompt used when the conversation has none, if any.</summary>
    public string? DefaultSystemPrompt { get; }

    /// <summary>Whether reasoning is removed from earlier assistant turns (Qwen3).</summary>
    public bool StripReasoningFromHistory { get; }

    /// <inheritdoc/>
    public string Name => "chatml";

    /// <inheritdoc/>
    public bool IncludesBos => false;

    /// <inheritdoc/>
    public IReadOnlyList<string> EndOfTurnMarkers { get; } = [End];

    /// <inheritdoc/>
    public string Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var sb = new StringBuilder();
        if (DefaultSystemPrompt != null && messages.Count > 0 && messages[0].Role != ChatRoles.System)
            AppendTurn(sb, ChatRoles.System, DefaultSystemPrompt);

        int lastUser = -1;
        for (int i = 0; i < messages.Count; i++) if (messages[i].Role == ChatRoles.User) lastUser = i;

        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i];
            string content = m.Content;
            if (StripReasoningFromHistory && m.Role == ChatRoles.Assistant && i < lastUser)
            {
                int close = content.LastIndexOf("</think>", StringComparison.Ordinal);
                if (close >= 0) content = content[(close + "</think>".Length)..].TrimStart('\n');
            }
            AppendTurn(sb, m.Role, content);
        }
        if (addGenerationPrompt) sb.Append(Start).Append(ChatRoles.Assistant).Append('\n');
        return sb.ToString();
    }

    private static void AppendTurn(StringBuilder sb, string role, string content) =>
        sb.Append(Start).Append(role).Append('\n').Append(content).Append(End).Append('\n');
}
