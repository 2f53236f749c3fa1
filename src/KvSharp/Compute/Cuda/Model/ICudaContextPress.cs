using KvSharp.Compression;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A press run on the device over a context prefilled into a <see cref="CudaPagedKvCache"/> (<c>kvsharp ask --device
/// cuda</c>): the prefill observes what the CPU press observes (SnapKV's window, H2O's chunks: the statistics are collected
/// next to the attention while the context goes in), the scores stay on the device or are computed from what it holds,
/// the CPU press's budget chooses on the host from the scores read back, and the eviction runs on the device.
/// <see cref="CudaContextPresses.From"/> maps a CPU press to its device press.
/// </summary>
public interface ICudaContextPress
{
    /// <summary>The press's text form (the CPU press's).</summary>
    string Text { get; }

    /// <summary>
    /// Prefills <paramref name="tokens"/> into the empty, one-sequence <paramref name="cache"/>, collecting on the way the
    /// attention statistics <see cref="Compress"/> scores by. Call <see cref="Compress"/> next, before anything else runs
    /// over the cache.
    /// </summary>
    /// <exception cref="KvSharpException">The cache is not empty, holds several sequences, or has no room for the tokens.</exception>
    void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens);

    /// <summary>
    /// Scores the tokens <see cref="Prefill"/> stored, keeps per head what the CPU press's budget keeps (tokens before
    /// <paramref name="protectedPrefix"/> kept outside the budget) and evicts the rest on the device. Returns the keep flags
    /// per head [layer · KvHeads + KV head] over the context's positions, and the scores they were chosen by.
    /// </summary>
    /// <exception cref="KvSharpException">The cache is not <see cref="Prefill"/>'s fresh prefill of <paramref name="tokens"/>, or the
    /// protected prefix lies outside them.</exception>
    bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores);
}
