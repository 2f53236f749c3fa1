using System.Text;

namespace KvSharp.Generation.Chat;

/// <summary>
/// Meta Llama-3 Instruct: <c>&lt;|begin_of_text|&gt;</c> once, then per turn
/// <c>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\ncontent&lt;|eot_id|&gt;</c> with the content trimmed
/// of surrounding whitespace, as the model's tokenizer_config.json template writes it. The text carries the BOS.
/// </summary>
public sealed class Llama3ChatTemplate : IChatTemplate
{
    private const string Bos = "<|begin_of_text|>";
    private const string Eot = "<|eot_id|>";

    /// <inheritdoc/>
    public string Name => "llama3";

    /// <inheritdoc/>
    public bool IncludesBos => true;

    /// <inheritdoc/>
    public IReadOnlyList<string> EndOfTurnMarkers { get; } = [Eot];

    /// <inheritdoc/>
    /// <remarks>
    /// Meta's original template appends the assistant header unconditionally; here it follows
    /// <paramref name="addGenerationPrompt"/> like the Llama-3.1 template. The BOS is written even for an empty
    /// conversation, since a Llama-3 prompt without it is out of distribution.
    /// </remarks>
    public string Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var sb = new StringBuilder(Bos);
        foreach (var m in messages) AppendHeader(sb, m.Role).Append(m.Content.Trim()).Append(Eot);
        if (addGenerationPrompt) AppendHeader(sb, ChatRoles.Assistant);
        return sb.ToString();
    }

    private static StringBuilder AppendHeader(StringBuilder sb, string role) =>
        sb.Append("<|start_header_id|>").Append(role).Append("<|end_header_id|>\n\n");
}
