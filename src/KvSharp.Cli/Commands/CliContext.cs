namespace KvSharp.Cli.Commands;

/// <summary>What the commands run against: the engine, the console streams and Ctrl+C.</summary>
/// <param name="Engine">The engine that loads models and generates.</param>
/// <param name="Input">Where chat reads user turns.</param>
/// <param name="Output">Where generated text goes.</param>
/// <param name="Error">Where diagnostics go.</param>
/// <param name="Cancellation">Cancelled by Ctrl+C.</param>
public sealed record CliContext(IEngineFacade Engine, TextReader Input, TextWriter Output, TextWriter Error, CancellationToken Cancellation);
