using System.CommandLine;
using KvSharp.Compression.Registry;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;

namespace KvSharp.Cli.Commands;

/// <summary>Sampling, length and stop options (a fresh set per command), bound into <see cref="GenerationOptions"/>.</summary>
internal sealed class GenerationOptionSet
{
    private static readonly SamplerOptions Defaults = new();

    public Option<int> MaxTokens { get; } = new Option<int>("--max-tokens", "-n") { Description = "Most tokens to generate", DefaultValueFactory = _ => new GenerationOptions().MaxTokens }.Int();
    public Option<float> Temperature { get; } = new Option<float>("--temperature", "--temp") { Description = "Sampling temperature; 0 = greedy", DefaultValueFactory = _ => Defaults.Temperature }.Float();
    public Option<int> TopK { get; } = new Option<int>("--top-k") { Description = "Keep only the K most likely tokens; 0 = off", DefaultValueFactory = _ => Defaults.TopK }.Int();
    public Option<float> TopP { get; } = new Option<float>("--top-p") { Description = "Nucleus sampling mass; 1 = off", DefaultValueFactory = _ => Defaults.TopP }.Float();
    public Option<float> MinP { get; } = new Option<float>("--min-p") { Description = "Drop tokens below this fraction of the best one's probability; 0 = off", DefaultValueFactory = _ => Defaults.MinP }.Float();
    public Option<float> RepeatPenalty { get; } = new Option<float>("--repeat-penalty") { Description = "Penalty for recently seen tokens; 1 = off", DefaultValueFactory = _ => Defaults.RepetitionPenalty }.Float();
    public Option<int> RepeatLastN { get; } = new Option<int>("--repeat-last-n") { Description = "How many recent tokens the penalty looks at; -1 = all", DefaultValueFactory = _ => Defaults.RepeatLastN }.Int();
    public Option<ulong?> Seed { get; } = new Option<ulong?>("--seed", "-s") { Description = "Random seed (the same seed gives the same text)" }.ULong();
    public Option<string[]> Stop { get; } = new Option<string[]>("--stop") { Description = "Stop when this text is generated (repeatable)", Arity = ArgumentArity.OneOrMore, HelpName = "TEXT" };
    public Option<bool> NoEscape { get; } = new Option<bool>("--no-escape") { Description = "Take --prompt, --stop and --system literally (by default \\n, \\t, \\\\, \\xHH... are escapes)" };
    public Option<string?> DecodePress { get; } = new Option<string?>("--decode-press") { Description = "Compress the KV cache while generating, e.g. rkv:tokens=512,every=128 or h2o:tokens=256 (decode presses: " + string.Join(", ", DecodePressRegistry.Presses.Select(p => p.Name)) + ")", HelpName = "PRESS" };
    public Option<bool> IgnoreEos { get; } = new Option<bool>("--ignore-eos") { Description = "Keep generating past end-of-sequence tokens" };

    public void AddTo(Command command)
    {
        foreach (Option o in new Option[] { MaxTokens, Temperature, TopK, TopP, MinP, RepeatPenalty, RepeatLastN, Seed, Stop, DecodePress, IgnoreEos, NoEscape })
            command.Options.Add(o);
    }

    /// <summary>How a text option's value is read: with escapes processed unless <c>--no-escape</c>.</summary>
    public Func<string, string> Text(ParseResult parse) => parse.GetValue(NoEscape) ? s => s : Escapes.Process;

    /// <summary>Reads the options and validates them; throws <see cref="UsageException"/> naming the option.</summary>
    public GenerationOptions Bind(ParseResult parse)
    {
        var options = new GenerationOptions
        {
            MaxTokens = parse.GetValue(MaxTokens),
            Sampler = new SamplerOptions
            {
                Temperature = parse.GetValue(Temperature),
                TopK = parse.GetValue(TopK),
                TopP = parse.GetValue(TopP),
                MinP = parse.GetValue(MinP),
                RepetitionPenalty = parse.GetValue(RepeatPenalty),
                RepeatLastN = parse.GetValue(RepeatLastN),
            },
            Seed = parse.GetValue(Seed),
            StopStrings = (parse.GetValue(Stop) ?? []).Select(Text(parse)).ToArray(),
            StopAtEos = !parse.GetValue(IgnoreEos),
        };
        try
        {
            options.Validate();
        }
        catch (KvSharpException e) when (e is not UsageException)
        {
            throw new UsageException(e.Message);
        }
        if (parse.GetValue(DecodePress) is { } press)
        {
            try { options = options with { DecodeCompression = DecodePressRegistry.Parse(press) }; }
            catch (KvSharpException e) when (e is not UsageException) { throw new UsageException($"--decode-press: {e.Message}"); }
        }
        return options;
    }
}
