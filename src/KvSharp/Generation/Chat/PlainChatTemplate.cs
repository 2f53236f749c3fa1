using System.Text;

namespace KvSharp.Generation.Chat;

/// <summary>
/// Fallback for models without a chat template: the system prompt as a paragraph, then "User: …" and
/// "Assistant: …" lines, ending with "Assistant:" as the generation prompt. The tokenizer adds its own BOS.
/// </summary>
public sealed class PlainChatTemplate : IChatTemplate
{
    /// <inheritdoc/>
    public string Name => "plain";

    /// <inheritdoc/>
    public bool IncludesBos => false;

    /// <inheritdoc/>
    public IReadOnlyList<string> EndOfTurnMarkers { get; } = ["\nUser:"];

    /// <inheritdoc/>
    public string Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var sb = new StringBuilder();
        foreach (var m in messages)
        {
            if (m.Role == ChatRoles.System) { sb.Append(m.Content).Append("\n\n"); continue; }
            sb.Append(Label(m.Role)).Append(": ").Append(m.Content).Append('\n');
        }
        if (addGenerationPrompt) sb.Append("Assistant:");
        return sb.ToString();
    }

    // "user" → "User": a capitalized speaker label reads like the dialogue found in pretraining text.
    private static string Label(string role) => role.Length == 0 ? role : char.ToUpperInvariant(role[0]) + role[1..];
}
