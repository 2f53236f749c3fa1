using System.Text.RegularExpressions;

namespace KvSharp.Generation.Chat;

/// <summary>Finds the chat template for a model, by name or from the Jinja template text the model ships.</summary>
public static partial class ChatTemplates
{
    /// <summary>The names <see cref="ByName"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } = ["chatml", "llama3", "llama2", "plain"];

    /// <summary>
    /// The template called <paramref name="name"/> (case-insensitive): "chatml", "llama3", "llama2" or "plain".
    /// Throws a <see cref="KvSharpException"/> listing the names otherwise.
    /// </summary>
    public static IChatTemplate ByName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.Trim().ToLowerInvariant() switch
        {
            "chatml" => new ChatMlTemplate(),
            "llama3" => new Llama3ChatTemplate(),
            "llama2" => new Llama2ChatTemplate(),
            "plain" => new PlainChatTemplate(),
            _ => throw new KvSharpException($"--template: unknown chat template '{name}'; known templates: {string.Join(", ", Names)}"),
        };
    }

    /// <summary>
    /// Picks a template from the model's Jinja chat template (GGUF <c>tokenizer.chat_template</c> or
    /// tokenizer_config.json <c>chat_template</c>) by the markers it writes; without a recognizable template, from
    /// the <paramref name="architecture"/> (Qwen models use ChatML); otherwise the plain fallback. A ChatML template
    /// that writes a literal default system prompt (SmolLM2, Qwen2.5) keeps it; one that handles "&lt;/think&gt;"
    /// (Qwen3) strips reasoning from earlier assistant turns.
    /// </summary>
    public static IChatTemplate Detect(string? jinjaTemplateText, string architecture)
    {
        if (!string.IsNullOrWhiteSpace(jinjaTemplateText))
        {
            string t = jinjaTemplateText;
            if (t.Contains("<|im_start|>", StringComparison.Ordinal))
                return new ChatMlTemplate(DefaultSystemPrompt(t), t.Contains("</think>", StringComparison.Ordinal));
            if (t.Contains("<|start_header_id|>", StringComparison.Ordinal))
                return new Llama3ChatTemplate();
            if (t.Contains("[INST]", StringComparison.Ordinal))
                return new Llama2ChatTemplate();
        }
        if ((architecture ?? "").StartsWith("qwen", StringComparison.OrdinalIgnoreCase))
            return new ChatMlTemplate();
        return new PlainChatTemplate();
    }

    /// <summary>
    /// A system prompt written as a literal in the template ("&lt;|im_start|&gt;system\nYou are …&lt;|im_end|&gt;"),
    /// as opposed to one built from the messages ("… + messages[0].content + …", which has quotes or '+' between).
    /// </summary>
    private static string? DefaultSystemPrompt(string template)
    {
        var m = LiteralSystemTurn().Match(template);
        return m.Success ? m.Groups[1].Value.Replace("\\n", "\n", StringComparison.Ordinal) : null;
    }

    // The newline after the role is either a real newline (JSON-decoded) or a Jinja "\n" escape.
    [GeneratedRegex(@"<\|im_start\|>system(?:\n|\\n)([^'""{}+]+?)<\|im_end\|>")]
    private static partial Regex LiteralSystemTurn();
}
