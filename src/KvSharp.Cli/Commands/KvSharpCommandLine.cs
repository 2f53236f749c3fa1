using System.CommandLine;

namespace KvSharp.Cli.Commands;

/// <summary>
/// The <c>kvsharp</c> command line: builds the commands, parses, and turns failures into one message and an exit
/// code — 0 success, 1 an error in the input files or data (<see cref="KvSharpException"/>), 2 a command line that
/// cannot run (unknown option, invalid value, missing or conflicting options). No stack traces for either.
/// </summary>
public static class KvSharpCommandLine
{
    /// <summary>Exit code for success.</summary>
    public const int Ok = 0;

    /// <summary>Exit code for an input error reported by the engine.</summary>
    public const int InputError = 1;

    /// <summary>Exit code for an unusable command line.</summary>
    public const int UsageError = 2;

    /// <summary>Builds the root command with <c>generate</c>, <c>chat</c>, <c>info</c>, <c>demo</c>, <c>ask</c>, <c>eval</c> and <c>report</c>.</summary>
    public static RootCommand Build(CliContext context)
    {
        var root = new RootCommand("kvsharp: LLM inference with a compressible KV cache");
        root.Subcommands.Add(GenerateCommand.Create(context));
        root.Subcommands.Add(ChatCommand.Create(context));
        root.Subcommands.Add(InfoCommand.Create(context));
        root.Subcommands.Add(DemoCommand.Create(context));
        root.Subcommands.Add(AskCommand.Create(context));
        root.Subcommands.Add(EvalCommand.Create(context));
        root.Subcommands.Add(ReportCommand.Create(context));
        root.Subcommands.Add(CalibrateCommand.Create(context));
        return root;
    }

    /// <summary>
    /// Runs the command line on the process's console (what the <c>kvsharp</c> executable does; the GPU runner's
    /// <c>kvsharp</c> verb too): the first Ctrl+C stops generation cleanly, a second one kills the process as usual.
    /// </summary>
    public static int RunOnConsole(string[] args)
    {
        using var cancel = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            if (cancel.IsCancellationRequested) return;
            e.Cancel = true;
            cancel.Cancel();
        };
        return Run(args, new CliContext(new Engine.EngineFacade(Console.Error), Console.In, Console.Out, Console.Error, cancel.Token));
    }

    /// <summary>Parses <paramref name="args"/>, runs the command, and returns the process exit code.</summary>
    public static int Run(string[] args, CliContext context)
    {
        var root = Build(context);
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // The first error is the one to fix; later ones are often consequences of it.
            context.Error.WriteLine($"kvsharp: {parse.Errors[0].Message}");
            context.Error.WriteLine($"Run '{HelpHint(parse)}' for the options.");
            return UsageError;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration
            {
                EnableDefaultExceptionHandler = false,
                Output = context.Output,
                Error = context.Error,
            });
        }
        catch (UsageException e)
        {
            context.Error.WriteLine($"kvsharp: {e.Message}");
            context.Error.WriteLine($"Run '{HelpHint(parse)}' for the options.");
            return UsageError;
        }
        catch (KvSharpException e)
        {
            context.Error.WriteLine($"kvsharp: {e.Message}");
            return InputError;
        }
        catch (OperationCanceledException) when (context.Cancellation.IsCancellationRequested)
        {
            context.Error.WriteLine("kvsharp: cancelled");
            return 130; // the shell's convention for SIGINT
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OutOfMemoryException)
        {
            // Environment problems (disk, permissions, memory) are the user's to fix: say what failed, no trace.
            context.Error.WriteLine($"kvsharp: {e.Message}");
            return InputError;
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("KVSHARP_DEBUG") is null)
        {
            // A bug: one line naming it, and how to get the stack trace for a report.
            context.Error.WriteLine($"kvsharp: internal error ({e.GetType().Name}): {e.Message}");
            context.Error.WriteLine("Set KVSHARP_DEBUG=1 to see the stack trace, and please report it.");
            return 70; // EX_SOFTWARE
        }
    }

    private static string HelpHint(ParseResult parse) =>
        parse.CommandResult.Command is RootCommand ? "kvsharp --help" : $"kvsharp {parse.CommandResult.Command.Name} --help";
}
