using KvSharp.Generation;

namespace KvSharp.Compression.Sessions;

/// <summary>One answer from a <see cref="CompressedContext"/>.</summary>
/// <param name="Generation">The generated tokens, text and timings (prefill = the question's tokens).</param>
/// <param name="CompressTime">Time spent compressing for this question (query-aware mode; zero otherwise).</param>
/// <param name="CacheBytes">Bytes of the cache the question was answered from (before the question was appended).</param>
public sealed record ContextAnswer(GenerationResult Generation, TimeSpan CompressTime, long CacheBytes);
