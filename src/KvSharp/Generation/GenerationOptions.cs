using KvSharp.Generation.Sampling;

namespace KvSharp.Generation;

/// <summary>What one generation request asks for: length, sampling and when to stop.</summary>
public sealed record GenerationOptions
{
    /// <summary>Most new tokens to generate (0 = none: the prompt is only processed). Command line: <c>--max-tokens</c>.</summary>
    public int MaxTokens { get; init; } = 256;

    /// <summary>How each token is chosen (<c>--temperature</c>, <c>--top-k</c>, <c>--top-p</c>, <c>--min-p</c>, <c>--repeat-penalty</c>, <c>--repeat-last-n</c>).</summary>
    public SamplerOptions Sampler { get; init; } = new();

    /// <summary>Texts that end generation when produced; the stop string itself is not output. Command line: <c>--stop</c> (repeatable).</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];

    /// <summary>Whether generation ends at one of the model's end-of-sequence tokens (not output).</summary>
    public bool StopAtEos { get; init; } = true;

    /// <summary>
    /// Random seed (<c>--seed</c>); when set it replaces <see cref="SamplerOptions.Seed"/>, so a seed can be given
    /// without restating the other sampler options. <see cref="EffectiveSampler"/> applies it.
    /// </summary>
    public ulong? Seed { get; init; }

    /// <summary>
    /// Compression applied while generating (R-KV, H2O: every N generated tokens the cache is cut back to a budget);
    /// null (the default) = none. Command line: <c>--decode-press</c>.
    /// </summary>
    public IDecodeCompression? DecodeCompression { get; init; }

    /// <summary>The sampler options with <see cref="Seed"/> applied.</summary>
    public SamplerOptions EffectiveSampler => Seed is { } seed ? Sampler with { Seed = seed } : Sampler;

    /// <summary>
    /// Throws a <see cref="KvSharpException"/> naming the command-line option when a value is invalid or the
    /// options contradict each other.
    /// </summary>
    public void Validate()
    {
        if (MaxTokens < 0)
            throw new KvSharpException($"--max-tokens must be >= 0, got {MaxTokens}");
        if (Sampler is null)
            throw new KvSharpException("sampler options are missing");
        Sampler.Validate();
        if (StopStrings is null)
            throw new KvSharpException("--stop: the list of stop strings is missing");
        if (StopStrings.Any(string.IsNullOrEmpty))
            throw new KvSharpException("--stop strings must not be empty (an empty stop string would end generation before any text)");
    }
}
