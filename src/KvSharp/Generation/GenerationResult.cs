namespace KvSharp.Generation;

/// <summary>Why generation ended.</summary>
public enum StopReason
{
    /// <summary>The token budget (--max-tokens) was spent.</summary>
    MaxTokens,
    /// <summary>The model produced an end-of-sequence token.</summary>
    EndOfSequence,
    /// <summary>A stop string appeared in the output.</summary>
    StopString,
    /// <summary>The context (KV cache capacity) is full.</summary>
    ContextFull,
    /// <summary>The caller cancelled.</summary>
    Cancelled,
}

/// <summary>The outcome of one generation: tokens, text, why it stopped and how fast it ran.</summary>
/// <param name="TokenIds">Generated ids (an EOS that ended generation is not included).</param>
/// <param name="Text">Generated text, without the stop string that ended it.</param>
/// <param name="Reason">Why generation ended.</param>
/// <param name="PromptTokens">Tokens prefilled for this call.</param>
/// <param name="PrefillTime">Time to run the prompt through the model.</param>
/// <param name="DecodeTime">Time spent producing the generated tokens after the first.</param>
public sealed record GenerationResult(
    IReadOnlyList<int> TokenIds, string Text, StopReason Reason, int PromptTokens, TimeSpan PrefillTime, TimeSpan DecodeTime)
{
    /// <summary>Prompt tokens per second.</summary>
    public double PrefillTokensPerSecond => PromptTokens / Math.Max(PrefillTime.TotalSeconds, 1e-9);

    /// <summary>Decode steps per second (each step runs one token through the model).</summary>
    public double DecodeTokensPerSecond => Math.Max(TokenIds.Count - 1, 0) / Math.Max(DecodeTime.TotalSeconds, 1e-9);
}
