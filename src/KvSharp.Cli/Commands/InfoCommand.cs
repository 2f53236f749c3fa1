using System.CommandLine;

namespace KvSharp.Cli.Commands;

/// <summary><c>kvsharp info</c>: print what a model file contains.</summary>
internal static class InfoCommand
{
    public static Command Create(CliContext context)
    {
        var model = new ModelOptions();
        var command = new Command("info", "Show a model's architecture, shapes, tokenizer and chat template");
        var path = new Argument<string?>("MODEL") { Description = "GGUF file or Hugging Face model folder (same as --model)", Arity = ArgumentArity.ZeroOrOne };
        command.Arguments.Add(path);
        model.AddTo(command);
        command.SetAction(parse =>
        {
            context.Engine.Info(model.Bind(parse, parse.GetValue(path)), context.Output);
            return 0;
        });
        return command;
    }
}
