using System.Globalization;

namespace KvSharp.Generation.Sampling;

/// <summary>
/// How the next token is chosen from the logits. The stages run in llama.cpp's default order:
/// repetition penalty → top-k → top-p → min-p → temperature → random draw.
/// Defaults match llama.cpp's command line except <see cref="MinP"/>, which is off unless asked for.
/// </summary>
public sealed record SamplerOptions
{
    /// <summary>The seed used when none is given, so that runs are reproducible by default.</summary>
    public const ulong DefaultSeed = 0x4B765368617270UL; // "KvSharp"

    /// <summary>Softmax temperature; 0 picks the most likely token (greedy, lowest id on ties).</summary>
    public float Temperature { get; init; } = 0.8f;

    /// <summary>Keeps only the <c>TopK</c> most likely tokens; 0 disables the stage.</summary>
    public int TopK { get; init; } = 40;

    /// <summary>Keeps the smallest set of most likely tokens whose probability sums to at least <c>TopP</c>; 1 disables it.</summary>
    public float TopP { get; init; } = 0.95f;

    /// <summary>Drops tokens less likely than <c>MinP</c> times the most likely one; 0 disables it.</summary>
    public float MinP { get; init; }

    /// <summary>
    /// Penalty for tokens seen in the last <see cref="RepeatLastN"/> tokens (llama.cpp semantics: a positive
    /// logit is divided by it, a negative one multiplied, once per distinct token); 1 disables it.
    /// </summary>
    public float RepetitionPenalty { get; init; } = 1.0f;

    /// <summary>How many of the most recent tokens the repetition penalty looks at; 0 disables it, -1 uses all given.</summary>
    public int RepeatLastN { get; init; } = 64;

    /// <summary>Seed of the sampler's own random generator: the same seed gives the same tokens on every platform.</summary>
    public ulong Seed { get; init; } = DefaultSeed;

    /// <summary>Options that always pick the most likely token.</summary>
    public static SamplerOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>Whether these options pick the most likely token without drawing at random.</summary>
    public bool IsGreedy => Temperature == 0 || TopK == 1;

    /// <summary>
    /// Throws a <see cref="KvSharpException"/> naming the option (as the command line spells it) when a value is out of range.
    /// </summary>
    public void Validate()
    {
        static string F(float v) => v.ToString("R", CultureInfo.InvariantCulture);
        if (!float.IsFinite(Temperature) || Temperature < 0)
            throw new KvSharpException($"--temperature must be a finite number >= 0 (0 = greedy), got {F(Temperature)}");
        if (TopK < 0)
            throw new KvSharpException($"--top-k must be >= 0 (0 = disabled), got {TopK}");
        if (!(TopP > 0 && TopP <= 1))
            throw new KvSharpException($"--top-p must be in (0, 1] (1 = disabled), got {F(TopP)}");
        if (!(MinP >= 0 && MinP <= 1))
            throw new KvSharpException($"--min-p must be in [0, 1] (0 = disabled), got {F(MinP)}");
        if (!float.IsFinite(RepetitionPenalty) || RepetitionPenalty <= 0)
            throw new KvSharpException($"--repeat-penalty must be a finite number > 0 (1 = disabled), got {F(RepetitionPenalty)}");
        if (RepeatLastN < -1)
            throw new KvSharpException($"--repeat-last-n must be >= -1 (-1 = all tokens, 0 = disabled), got {RepeatLastN}");
    }
}
