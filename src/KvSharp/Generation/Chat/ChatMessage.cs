namespace KvSharp.Generation.Chat;

/// <summary>One turn of a conversation.</summary>
/// <param name="Role">"system", "user" or "assistant" (other roles are written as given).</param>
/// <param name="Content">The text of the turn.</param>
public sealed record ChatMessage(string Role, string Content)
{
    /// <summary>A system prompt.</summary>
    public static ChatMessage System(string content) => new(ChatRoles.System, content);

    /// <summary>A user turn.</summary>
    public static ChatMessage User(string content) => new(ChatRoles.User, content);

    /// <summary>An assistant turn.</summary>
    public static ChatMessage Assistant(string content) => new(ChatRoles.Assistant, content);
}

/// <summary>The role names chat templates understand.</summary>
public static class ChatRoles
{
    /// <summary>The system prompt's role.</summary>
    public const string System = "system";

    /// <summary>The user's role.</summary>
    public const string User = "user";

    /// <summary>The model's role.</summary>
    public const string Assistant = "assistant";
}
