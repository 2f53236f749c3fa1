using System.CommandLine;
using KvSharp.Generation.Chat;

namespace KvSharp.Cli.Commands;

/// <summary>The <c>--template</c> option: a chat template name, "auto" (detect from the model) or, for generate, "none".</summary>
internal static class TemplateOption
{
    public const string Auto = "auto";
    public const string None = "none";

    public static Option<string> Create(string defaultValue, string description) =>
        new("--template") { Description = description, DefaultValueFactory = _ => defaultValue, HelpName = "NAME" };

    /// <summary>The named template, or null for "auto"/"none"; unknown names are a usage error listing the known ones.</summary>
    public static IChatTemplate? Bind(string name, bool allowNone)
    {
        if (name.Equals(Auto, StringComparison.OrdinalIgnoreCase)) return null;
        if (allowNone && name.Equals(None, StringComparison.OrdinalIgnoreCase)) return null;
        try
        {
            return ChatTemplates.ByName(name);
        }
        catch (KvSharpException)
        {
            string extra = allowNone ? $"{None}, {Auto}" : Auto;
            throw new UsageException($"--template: unknown chat template '{name}'; known: {extra}, {string.Join(", ", ChatTemplates.Names)}");
        }
    }
}
