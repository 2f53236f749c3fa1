using KvSharp.Cache;

namespace KvSharp.Generation;

/// <summary>
/// Compression applied while generating (R-KV, H2O during decoding): the generator starts one
/// <see cref="IDecodeSession"/> per generation once the prompt is prefilled and tells it about every decode step.
/// Set it on <see cref="GenerationOptions.DecodeCompression"/>; build one from its text form with
/// <c>Compression.Registry.DecodePressRegistry.Parse</c>.
/// </summary>
public interface IDecodeCompression
{
    /// <summary>The canonical text form (parses back to an identical method).</summary>
    string Text { get; }

    /// <summary>Starts compressing <paramref name="cache"/>, which holds the prefilled prompt (and whatever came before it).</summary>
    /// <exception cref="KvSharpException">The cache is of a kind this method cannot compress.</exception>
    IDecodeSession Start(IKvCache cache);
}

/// <summary>
/// One generation's decode-time compression state. Step k (1-based) is the k-th generated token run through the model
/// (the first generated token is sampled from the prompt's logits, so step 1 runs it). Dispose ends anything still
/// collecting, whatever way generation ended.
/// </summary>
public interface IDecodeSession : IDisposable
{
    /// <summary>Called just before step <paramref name="step"/> runs: the cache's length is the position of the token about to run.</summary>
    void BeforeStep(int step);

    /// <summary>Called right after step <paramref name="step"/> ran (its key and value are in the cache).</summary>
    void AfterStep(int step);
}
