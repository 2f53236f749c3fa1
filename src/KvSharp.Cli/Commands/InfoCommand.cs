using System.CommandLine;

namespace KvSharp.Cli.Commands;

/// <summary><c>kvsharp info</c>: print what a model file contains.</summary>
internal static class InfoCommand
{
    public static Command Create(CliContext context)
    {
        var model = new ModelOptions();
        var command = new Command("info", "Show a model's architecture, shapes, tokenizer and chat template, or a saved KV cache's accounting");
        var path = new Argument<string?>("MODEL") { Description = "GGUF file or Hugging Face model folder (same as --model)", Arity = ArgumentArity.ZeroOrOne };
        var cache = new Option<string?>("--cache") { Description = "Show a saved KV cache (--save-cache) instead: bytes per layer, KV head and format", HelpName = "FILE" };
        command.Arguments.Add(path);
        model.AddTo(command);
        command.Options.Add(cache);
        command.SetAction(parse =>
        {
            if (parse.GetValue(cache) is { } file)
            {
                if (parse.GetValue(path) != null || parse.GetValue(model.Model) != null || parse.GetValue(model.Dummy) != null)
                    throw new UsageException("info --cache FILE reads the cache file alone: give no model");
                if (!File.Exists(file)) throw new UsageException($"--cache: '{file}' does not exist");
                context.Engine.CacheInfo(file, context.Output);
                return 0;
            }
            context.Engine.Info(model.Bind(parse, parse.GetValue(path)), context.Output);
            return 0;
        });
        return command;
    }
}
