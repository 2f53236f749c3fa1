namespace KvSharp.Generation.Chat;

/// <summary>
/// Turns a conversation into the prompt text a chat model was trained on. The text contains the model's special
/// markers literally (e.g. "&lt;|im_start|&gt;"), so it must be encoded with special-token parsing on.
/// </summary>
public interface IChatTemplate
{
    /// <summary>The template's name as <see cref="ChatTemplates.ByName"/> accepts it.</summary>
    string Name { get; }

    /// <summary>
    /// Whether the formatted text already starts with the BOS marker (Llama-3's "&lt;|begin_of_text|&gt;",
    /// Llama-2's "&lt;s&gt;"); the tokenizer must then not add a second BOS (encode with <c>addSpecial: false</c>).
    /// </summary>
    bool IncludesBos { get; }

    /// <summary>
    /// Text markers that end an assistant turn ("&lt;|im_end|&gt;", "&lt;|eot_id|&gt;", ...). Usually also an EOS
    /// token of the model; useful as stop strings when the model's EOS list lacks them.
    /// </summary>
    IReadOnlyList<string> EndOfTurnMarkers { get; }

    /// <summary>
    /// Formats <paramref name="messages"/>; <paramref name="addGenerationPrompt"/> appends the opening of an
    /// assistant turn so that the model's continuation is its answer.
    /// </summary>
    string Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt);
}
