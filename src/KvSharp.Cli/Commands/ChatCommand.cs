using System.CommandLine;
using KvSharp.Generation.Chat;

namespace KvSharp.Cli.Commands;

/// <summary>
/// <c>kvsharp chat</c>: an interactive conversation. Each line read is a user turn; "/reset" forgets the
/// conversation (keeping the system prompt), "/exit" or end of input ends it.
/// </summary>
internal static class ChatCommand
{
    public static Command Create(CliContext context)
    {
        var model = new ModelOptions();
        var cacheFiles = new CacheFileOptions();
        var generation = new GenerationOptionSet();
        var template = TemplateOption.Create(TemplateOption.Auto,
            "Chat template: auto (from the model), chatml, llama3, llama2, plain");
        var system = new Option<string?>("--system") { Description = "System prompt", HelpName = "TEXT" };
        var showCache = new Option<bool>("--show-cache") { Description = "Report KV-cache size after each answer" };

        var command = new Command("chat", "Chat with a model interactively");
        model.AddTo(command);
        cacheFiles.AddTo(command);
        command.Options.Add(template);
        command.Options.Add(system);
        generation.AddTo(command);
        command.Options.Add(showCache);

        command.SetAction(parse =>
        {
            var request = new ChatRequest(
                cacheFiles.Bind(parse, model.Bind(parse)),
                TemplateOption.Bind(parse.GetValue(template)!, allowNone: false),
                parse.GetValue(system) is { } systemPrompt ? generation.Text(parse)(systemPrompt) : null,
                generation.Bind(parse),
                parse.GetValue(showCache));
            using var session = context.Engine.OpenChat(request, context.Cancellation);
            RunLoop(session, request.SystemPrompt, context);
            return 0;
        });
        return command;
    }

    /// <summary>Reads user turns until "/exit" or end of input, printing each streamed answer.</summary>
    internal static void RunLoop(IChatSession session, string? systemPrompt, CliContext context)
    {
        var history = new List<ChatMessage>();
        void Reset()
        {
            history.Clear();
            if (!string.IsNullOrEmpty(systemPrompt)) history.Add(ChatMessage.System(systemPrompt));
        }
        Reset();
        context.Error.WriteLine($"chat template: {session.Template.Name}; /reset forgets the conversation, /exit quits");

        while (!context.Cancellation.IsCancellationRequested)
        {
            context.Error.Write("> ");
            string? line = context.Input.ReadLine();
            if (line == null || line.Trim() == "/exit") break;
            if (line.Trim() == "/reset") { Reset(); continue; }
            if (line.Length == 0) continue;

            history.Add(ChatMessage.User(line));
            string answer = session.Respond(history, text => { context.Output.Write(text); context.Output.Flush(); }, context.Cancellation);
            context.Output.WriteLine();
            history.Add(ChatMessage.Assistant(answer));
        }
    }
}
