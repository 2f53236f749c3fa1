using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;

namespace KvSharp.Cache;

/// <summary>
/// Which KV cache a run uses, in the text form the CLI takes: <c>FORMAT</c> for keys and values alike
/// or <c>KEYS:VALUES</c> (e.g. <c>f16</c>, <c>int4:int2</c>), optionally <c>+rN</c> for a KIVI-style
/// full-precision residual window of the newest N tokens (e.g. <c>int2+r128</c>).
/// </summary>
/// <param name="Keys">Key block format (quantized per channel).</param>
/// <param name="Values">Value block format (quantized per token).</param>
/// <param name="ResidualTokens">Newest tokens kept in float before they are quantized as a block.</param>
public sealed record KvCacheSpec(KvFormat Keys, KvFormat Values, int ResidualTokens = 0)
{
    /// <summary>Parses the text form; a clear error names the bad part.</summary>
    public static KvCacheSpec Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string body = text.Trim();
        int residual = 0;
        int plus = body.IndexOf('+', StringComparison.Ordinal);
        if (plus >= 0)
        {
            string r = body[(plus + 1)..];
            if (!r.StartsWith('r') || !int.TryParse(r.AsSpan(1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out residual))
                throw new KvSharpException($"KV cache '{text}': the residual window is written +rN (e.g. int2+r128), got '+{r}'");
            body = body[..plus];
        }
        var parts = body.Split(':');
        if (parts.Length > 2) throw new KvSharpException($"KV cache '{text}': expected FORMAT or KEYS:VALUES");
        var keys = KvFormatInfo.Parse(parts[0]);
        var values = parts.Length == 2 ? KvFormatInfo.Parse(parts[1]) : keys;
        return new KvCacheSpec(keys, values, residual);
    }

    /// <summary>Creates the cache for <paramref name="config"/> holding up to <paramref name="maxTokens"/> tokens.</summary>
    public PagedKvCache Create(Models.ModelConfig config, int maxTokens) =>
        new(config, new PagedKvCacheOptions { KeyFormat = Keys, ValueFormat = Values, ResidualTokens = ResidualTokens, MaxTokens = maxTokens });

    /// <inheritdoc />
    public override string ToString() =>
        (Keys == Values ? Keys.ToString() : $"{Keys}:{Values}") + (ResidualTokens > 0 ? $"+r{ResidualTokens}" : "");
}
