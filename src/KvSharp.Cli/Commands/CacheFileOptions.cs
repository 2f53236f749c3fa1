using System.CommandLine;

namespace KvSharp.Cli.Commands;

/// <summary><c>--load-cache</c> and <c>--save-cache</c> of generate and chat.</summary>
internal sealed class CacheFileOptions
{
    public Option<string?> Load { get; } = new Option<string?>("--load-cache") { Description = "Start from this saved KV cache (same model): the prompt continues after its tokens, in its formats", HelpName = "FILE" };
    public Option<string?> Save { get; } = new Option<string?>("--save-cache") { Description = "Save the KV cache to this file afterwards (chat: after each answer); a plain run uses f32 blocks unless --kv-cache says otherwise", HelpName = "FILE" };

    public void AddTo(Command command)
    {
        command.Options.Add(Load);
        command.Options.Add(Save);
    }

    /// <summary><paramref name="model"/> with the cache files; a missing --load-cache file is a usage error.</summary>
    public ModelSource Bind(ParseResult parse, ModelSource model)
    {
        string? load = parse.GetValue(Load), save = parse.GetValue(Save);
        if (load != null && !File.Exists(load)) throw new UsageException($"--load-cache: '{load}' does not exist");
        if (load != null && model.KvCache != null) throw new UsageException("--load-cache and --kv-cache cannot be used together: a loaded cache keeps its own formats");
        return model with { LoadCache = load, SaveCache = save };
    }
}
