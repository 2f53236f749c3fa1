using System.Globalization;
using System.IO.Hashing;
using KvSharp.Models;

namespace KvSharp.Cache.Paged;

/// <summary>
/// Identifies the model a saved KV cache belongs to, so <see cref="PagedKvCache.Load(string, string, int?)"/> refuses
/// keys and values of another model. Keys and values depend on everything up to each layer's K/V projections; the
/// fingerprint combines the architecture numbers that shape them with a hash of weights.
/// </summary>
public static class KvCacheFingerprint
{
    /// <summary>Bytes hashed from the start of each identifying tensor: enough to tell models apart, cheap on any size.</summary>
    private const int HashedBytes = 1 << 16;

    /// <summary>
    /// The fingerprint of <paramref name="weights"/>: the architecture numbers plus an XXH64 of the first 64 KiB of
    /// the token embedding and of the last layer's K projection, as stored. The embedding tells models apart; the K
    /// projection tells apart fine-tunes that kept the embedding. Hashing stored bytes (not file names or sizes)
    /// keeps the fingerprint the same wherever the file lives, and makes a re-quantized copy of a model (other
    /// stored bytes, other K/V) a different model.
    /// </summary>
    public static string Of(ModelWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        var hash = new XxHash64();
        foreach (var name in new[] { TensorNames.TokenEmbedding, TensorNames.Layer(weights.Config.NumLayers - 1, TensorNames.Suffix.K) })
        {
            var t = weights.Require(name);
            var bytes = t.Bytes;
            hash.Append(bytes[..Math.Min(bytes.Length, HashedBytes)]);
            hash.Append(BitConverter.GetBytes((int)t.Type));
        }
        return Of(weights.Config, $"weights:{hash.GetCurrentHashAsUInt64():x16}");
    }

    /// <summary>
    /// The fingerprint of a model of <paramref name="config"/> identified by <paramref name="modelIdentity"/> (e.g.
    /// a weights hash; null: the architecture alone): architecture, layers, heads, KV heads, head dimension, hidden
    /// size, vocabulary and RoPE settings, then the identity.
    /// </summary>
    public static string Of(ModelConfig config, string? modelIdentity)
    {
        ArgumentNullException.ThrowIfNull(config);
        var c = CultureInfo.InvariantCulture;
        string rope = string.Create(c, $"rope {config.RopeStyle} theta {config.RopeTheta:R}")
            + (config.RopeScaling is { } s ? string.Create(c, $" llama3 x{s.Factor:R}/{s.LowFreqFactor:R}/{s.HighFreqFactor:R}/{s.OriginalMaxPositions}") : "");
        string arch = string.Create(c, $"{config.Architecture} {config.NumLayers} layers, {config.NumHeads} heads, {config.NumKvHeads} KV heads, head dim {config.HeadDim}, hidden {config.HiddenSize}, vocab {config.VocabSize}, {rope}")
            + (config.QkNorm ? ", qk-norm" : "") + (config.AttentionBias ? ", bias" : "");
        return modelIdentity is null ? arch : $"{arch} [{modelIdentity}]";
    }
}
