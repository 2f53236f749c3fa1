using System.CommandLine;
using KvSharp.Compression.Sessions;

namespace KvSharp.Cli.Commands;

/// <summary>
/// <c>kvsharp ask</c>: prefill a context file once, compress its KV cache once with a press, then answer every
/// <c>--question</c> from that compressed cache (each appended and rolled back). Answers are greedy unless
/// <c>--temperature</c> is given, and at most 64 tokens unless <c>--max-tokens</c> is.
/// </summary>
internal static class AskCommand
{
    public static Command Create(CliContext context)
    {
        var model = new ModelOptions();
        var generation = new GenerationOptionSet();
        var contextFile = new Option<string>("--context") { Description = "Text file holding the context", Required = true, HelpName = "FILE" };
        var press = new Option<string?>("--press") { Description = "Compression press, e.g. streamingllm:keep=0.3, keynorm+pyramid:keep=0.25, clusterkv:keep=0.1 (recall: every byte kept, each decode step reads the best clusters), kvzip:keep=0.5+clusterkv:tokens=256 (default: none)", HelpName = "PRESS" };
        var questions = new Option<string[]>("--question", "-q") { Description = "A question (repeatable); appended to the context, answered, rolled back", Required = true, Arity = ArgumentArity.OneOrMore, HelpName = "TEXT" };
        var queryAware = new Option<bool>("--query-aware") { Description = "Compress a copy of the context per question with the question seen (default: once, question-agnostic)" };
        var compare = new Option<bool>("--compare") { Description = "Also answer from the uncompressed cache and show both answers" };
        var showCache = new Option<bool>("--show-cache") { Description = "Print the compressed cache's bytes per format" };
        var device = new Option<string>("--device")
        {
            Description = "Where the model runs: cpu, or cuda (an NVIDIA GPU: prefill, the press (snapkv, tova, h2o, kvzip, keynorm, streamingllm, random; any budget) and the answers on the device)",
            DefaultValueFactory = _ => "cpu",
            HelpName = "cpu|cuda",
        };

        var command = new Command("ask", "Prefill a context once, compress its KV cache, and answer several questions from it");
        model.AddTo(command);
        command.Options.Add(contextFile);
        command.Options.Add(press);
        command.Options.Add(questions);
        command.Options.Add(queryAware);
        command.Options.Add(compare);
        generation.AddTo(command);
        command.Options.Add(showCache);
        command.Options.Add(device);

        command.SetAction(parse =>
        {
            var source = model.Bind(parse);
            string file = parse.GetValue(contextFile)!;
            if (!File.Exists(file)) throw new UsageException($"--context: '{file}' does not exist");
            ContextPress? parsed = null;
            if (parse.GetValue(press) is { } text)
            {
                try { parsed = ContextPress.Parse(text); }
                catch (KvSharpException e) { throw new UsageException($"--press: {e.Message}"); }
                if (parsed.Press == null && parsed.Recall == null) parsed = null; // "none"
            }
            var options = generation.Bind(parse);
            if (parsed?.Recall != null && options.DecodeCompression != null)
                throw new UsageException("--decode-press cannot be combined with a clusterkv --press: ClusterKV answers from its own copy of every token and would not see the evictions");
            if (parse.GetResult(generation.Temperature) is null or { Implicit: true })
                options = options with { Sampler = options.Sampler with { Temperature = 0 } };
            if (parse.GetResult(generation.MaxTokens) is null or { Implicit: true })
                options = options with { MaxTokens = 64 };
            var text2 = generation.Text(parse);
            var request = new AskRequest(source, file, parsed, parse.GetValue(questions)!.Select(text2).ToArray(),
                parse.GetValue(queryAware), parse.GetValue(compare), options, parse.GetValue(showCache))
            { Device = GenerateCommand.ParseDevice(parse.GetValue(device)!) };
            return context.Engine.Ask(request, context.Output, context.Cancellation);
        });
        return command;
    }
}
