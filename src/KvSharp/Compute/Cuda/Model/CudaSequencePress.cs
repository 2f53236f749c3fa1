using KvSharp.Compression;
using KvSharp.Generation.Chat;
using KvSharp.Tokenization;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// A sequence of presses on the device (the CPU's <c>SequentialPress</c>, text <c>a + b</c>): the first press prefills the
/// context observing what it needs and compresses it, then each later press compresses what the earlier ones left, in
/// order (an eviction then a re-quantization, two evictions, ...), all on the device. A later press therefore scores the
/// stored tokens (positions, keys read back) or none: one that needs a fresh prefill (attention statistics of the
/// prefill, KVzip's runs over the whole context) is refused by <see cref="CudaContextPresses.From"/>, as is the whole
/// sequence when one press does not run on the device.
/// </summary>
public sealed class CudaSequencePress : ICudaContextPress
{
    /// <summary>The presses, in order; only the first may need a fresh prefill.</summary>
    /// <exception cref="ArgumentException">Fewer than two presses, or a later one needs a fresh prefill.</exception>
    public CudaSequencePress(IReadOnlyList<ICudaContextPress> presses)
    {
        ArgumentNullException.ThrowIfNull(presses);
        if (presses.Count < 2) throw new ArgumentException("a sequence needs at least two presses", nameof(presses));
        if (presses.Skip(1).FirstOrDefault(p => p.NeedsFreshPrefill) is { } fresh)
            throw new ArgumentException($"{fresh.Text} needs a fresh prefill: only a sequence's first press may", nameof(presses));
        Presses = presses;
    }

    /// <summary>The presses, in order.</summary>
    public IReadOnlyList<ICudaContextPress> Presses { get; }

    /// <inheritdoc />
    public string Text => string.Join(" + ", Presses.Select(p => p.Text));

    /// <inheritdoc />
    public bool NeedsFreshPrefill => Presses[0].NeedsFreshPrefill;

    /// <inheritdoc />
    public void Prefill(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens) => Presses[0].Prefill(model, cache, tokens);

    /// <summary>
    /// Runs every press in order. Returns per head whether each token the head stored before the sequence (ascending
    /// position) is still stored, and the first press's scores.
    /// </summary>
    public bool[][] Compress(CudaTransformer model, CudaPagedKvCache cache, IReadOnlyList<int> tokens, ITokenizer tokenizer, IChatTemplate? template,
        int protectedPrefix, out HeadScores scores)
    {
        ArgumentNullException.ThrowIfNull(cache);
        var before = CudaPressSelection.AscendingPositions(cache);
        Presses[0].Compress(model, cache, tokens, tokenizer, template, protectedPrefix, out scores);
        foreach (var press in Presses.Skip(1)) press.Compress(model, cache, tokens, tokenizer, template, protectedPrefix, out _);
        var result = new bool[before.Length][];
        for (int h = 0; h < before.Length; h++)
        {
            var stored = cache.StoredPositions(h).ToHashSet();
            result[h] = [.. before[h].Select(stored.Contains)];
        }
        return result;
    }
}
