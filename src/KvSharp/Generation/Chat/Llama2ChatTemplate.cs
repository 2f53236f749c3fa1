using System.Text;

namespace KvSharp.Generation.Chat;

/// <summary>
/// Meta Llama-2 Chat: <c>&lt;s&gt;[INST] &lt;&lt;SYS&gt;&gt;\nsystem\n&lt;&lt;/SYS&gt;&gt;\n\nuser [/INST] answer &lt;/s&gt;</c>,
/// a BOS before every user turn and the system prompt folded into the first one, contents trimmed. Roles after the
/// optional system prompt must alternate user/assistant. The generation prompt is implicit (the text ends with
/// "[/INST]").
/// </summary>
public sealed class Llama2ChatTemplate : IChatTemplate
{
    /// <inheritdoc/>
    public string Name => "llama2";

    /// <inheritdoc/>
    public bool IncludesBos => true;

    /// <inheritdoc/>
    public IReadOnlyList<string> EndOfTurnMarkers { get; } = ["</s>"];

    /// <inheritdoc/>
    public string Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        string? system = null;
        int first = 0;
        if (messages.Count > 0 && messages[0].Role == ChatRoles.System) { system = messages[0].Content; first = 1; }

        var sb = new StringBuilder();
        for (int i = first; i < messages.Count; i++)
        {
            var m = messages[i];
            bool expectUser = (i - first) % 2 == 0;
            if ((m.Role == ChatRoles.User) != expectUser || (m.Role != ChatRoles.User && m.Role != ChatRoles.Assistant))
                throw new KvSharpException(
                    $"llama2 chat template: turn {i + 1} has role '{m.Role}', but after an optional system prompt the roles must alternate user/assistant/user/...");
            string content = m.Content;
            if (i == first && system != null) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
            if (m.Role == ChatRoles.User) sb.Append("<s>[INST] ").Append(content.Trim()).Append(" [/INST]");
            else sb.Append(' ').Append(content.Trim()).Append(" </s>");
        }
        return sb.ToString();
    }
}
