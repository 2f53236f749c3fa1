using KvSharp.Generation;

namespace KvSharp.Compression.Sessions;

/// <summary>One answer from a <see cref="CompressedContext"/>.</summary>
/// <param name="Generation">The generated tokens, text and timings (prefill = the question's tokens).</param>
/// <param name="CompressTime">Time spent compressing for this question (query-aware mode, ClusterKV's clustering included; zero otherwise).</param>
/// <param name="CacheBytes">Bytes of the cache the question was answered from (before the question was appended).</param>
public sealed record ContextAnswer(GenerationResult Generation, TimeSpan CompressTime, long CacheBytes)
{
    /// <summary>What ClusterKV's decode steps read (null without recall).</summary>
    public RecallStatistics? Recall { get; init; }
}

/// <summary>What ClusterKV recall read while answering one question.</summary>
/// <param name="DecodeSteps">Decode steps served by cluster selection (the question's own tokens attend everything).</param>
/// <param name="AttendedTokens">Mean tokens attended per decode step and (layer, KV head) (NaN without decode steps).</param>
/// <param name="FullTokens">
/// Mean tokens full attention would read per decode step and (layer, KV head): the tokens the (pressed) cache stores
/// per head, the question's and the answer's so far.
/// </param>
/// <param name="CopyBytes">Bytes of ClusterKV's float32 copy of every key and value, besides the cache's own bytes.</param>
public sealed record RecallStatistics(long DecodeSteps, double AttendedTokens, double FullTokens, long CopyBytes);
