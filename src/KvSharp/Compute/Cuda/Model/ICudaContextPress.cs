using KvSharp.Compression;
using KvSharp.Compression.Budgets;
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
    /// Whether the press scores only a fresh prefill of the context (its <see cref="Prefill"/> collects attention
    /// statistics, or it runs queries over the whole context after it, as KVzip): such a press can be only the first of a
    /// sequence. The others score what the cache stores now (positions, keys read back) and also run on a cache an earlier
    /// press of a sequence compressed.
    /// </summary>
    bool NeedsFreshPrefill { get; }

    /// <summary>
    /// Prefills <paramref name="tokens"/> into the empty, one-sequence <paramref name="cache"/>, collecting on the way the
    /// attention statistics <see cref="Compress"/> scores by. Call <see cref="Compress"/> next, before anything else runs
    /// over the cache.
    /// </summary>
    /// <exception cref="KvSharpException">The cache is not empty, holds several sequences, or has no room for the tokens.</exception>
    void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens);

    /// <summary>
    /// Compresses what <see cref="Prefill"/> stored (or, for a press that does not need a fresh prefill, what the cache
    /// stores now) as the CPU press does: an eviction press keeps per head what its budget keeps (tokens before
    /// <paramref name="protectedPrefix"/> kept outside the budget) and evicts the rest on the device; a quantization press
    /// re-quantizes its tiers on the device (and evicts the pruned ones). Returns per head [layer · KvHeads + KV head]
    /// whether each token it stored before the press (ascending position) is still stored, and the scores the press chose
    /// by (empty arrays for presses without a scorer: KIVI, KVTuner).
    /// </summary>
    /// <exception cref="KvSharpException">The cache is not <see cref="Prefill"/>'s fresh prefill of <paramref name="tokens"/> (a press that needs
    /// one) or does not hold them, the protected prefix lies outside them, or the cache's geometry does not fit the press.</exception>
    bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores);
}

/// <summary>
/// A device press that scores tokens and keeps what a CPU budget keeps (<see cref="CudaWindowPress"/>, <see cref="CudaH2oPress"/>,
/// <see cref="CudaKvCompressPress"/>, <see cref="CudaKvzipPress"/>, <see cref="CudaAttentionFreePress"/>): its scores also
/// rank the tiers of the quantization presses (MiKV, ZipVL, LeanKV: <see cref="CudaQuantizationPress"/>) and KVCrush's
/// importance (<see cref="CudaKvCrushPress"/>).
/// </summary>
public interface ICudaScoredPress : ICudaContextPress
{
    /// <summary>The budget: how many tokens each head keeps.</summary>
    IBudget Budget { get; }

    /// <summary>
    /// The scores of every token each head stores (per head [layer · KvHeads + KV head], ascending position), without
    /// changing what the cache stores; ends the statistics <see cref="ICudaContextPress.Prefill"/> collected.
    /// </summary>
    /// <exception cref="KvSharpException">As <see cref="ICudaContextPress.Compress"/>.</exception>
    HeadScores Score(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template, int protectedPrefix);

    /// <summary>
    /// An eviction press's compression: <see cref="Score"/>, then the budget's keep masks (the protected prefix outside the
    /// budget) evicted on the device (<see cref="CudaPressSelection.KeepAndEvict"/>). A press with more to do (KVzip's
    /// overloads) implements <see cref="ICudaContextPress.Compress"/> itself.
    /// </summary>
    bool[][] ICudaContextPress.Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores)
    {
        scores = Score(model, cache, tokens, tokenizer, template, protectedPrefix);
        return CudaPressSelection.KeepAndEvict(cache, Budget, scores, protectedPrefix);
    }
}
