using System.CommandLine;

namespace KvSharp.Cli.Commands;

/// <summary><c>kvsharp generate</c>: continue one prompt and print the text.</summary>
internal static class GenerateCommand
{
    public static Command Create(CliContext context)
    {
        var model = new ModelOptions();
        var cacheFiles = new CacheFileOptions();
        var generation = new GenerationOptionSet();
        var prompt = new Option<string>("--prompt", "-p") { Description = "Text to continue", Required = true };
        var template = TemplateOption.Create(TemplateOption.None,
            "Wrap the prompt as one user turn of this chat template: none (raw text), auto (the model's), chatml, llama3, llama2, plain");
        var showCache = new Option<bool>("--show-cache") { Description = "Report KV-cache size and timings afterwards" };
        var device = new Option<string>("--device")
        {
            Description = "Where the model runs: cpu, or cuda (an NVIDIA GPU: bf16/f16/f32 weights, float16 KV cache)",
            DefaultValueFactory = _ => "cpu",
            HelpName = "cpu|cuda",
        };

        var command = new Command("generate", "Generate a continuation of a prompt");
        model.AddTo(command);
        cacheFiles.AddTo(command);
        command.Options.Add(prompt);
        command.Options.Add(template);
        generation.AddTo(command);
        command.Options.Add(showCache);
        command.Options.Add(device);

        command.SetAction(parse =>
        {
            string templateName = parse.GetValue(template)!;
            var request = new GenerateRequest(
                cacheFiles.Bind(parse, model.Bind(parse)),
                generation.Text(parse)(parse.GetValue(prompt)!),
                TemplateOption.Bind(templateName, allowNone: true),
                templateName.Equals(TemplateOption.None, StringComparison.OrdinalIgnoreCase) ? null : templateName.ToLowerInvariant(),
                generation.Bind(parse),
                parse.GetValue(showCache))
            { Device = ParseDevice(parse.GetValue(device)!) };
            return context.Engine.Generate(request, context.Output, context.Cancellation);
        });
        return command;
    }

    /// <summary>The <c>--device</c> value; anything but cpu or cuda is a usage error naming the option.</summary>
    internal static ComputeDevice ParseDevice(string text) => text.ToLowerInvariant() switch
    {
        "cpu" => ComputeDevice.Cpu,
        "cuda" or "gpu" => ComputeDevice.Cuda,
        _ => throw new UsageException($"--device must be cpu or cuda; got '{text}'"),
    };
}
