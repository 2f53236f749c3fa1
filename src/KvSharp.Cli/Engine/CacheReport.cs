using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Models;

namespace KvSharp.Cli.Engine;

/// <summary>The KV-cache lines of <c>--show-cache</c> and the demo: exact bytes, per format, and the ratio to F16.</summary>
internal static class CacheReport
{
    public static IEnumerable<(string Name, string Value)> Rows(IKvCache cache, ModelConfig config)
    {
        long f16 = config.KvBytesPerToken(2) * (long)cache.Length;
        if (cache is PagedKvCache paged)
        {
            yield return ("KV cache", $"{cache.Length} tokens, {cache.ByteCount:N0} bytes ({Units.Bytes(cache.ByteCount)}), keys {paged.KeyLayout}, values {paged.ValueLayout}");
            foreach (var (format, bytes) in paged.BytesByFormat().Where(p => p.Value > 0))
                yield return ($"  in {format} blocks", $"{bytes:N0} bytes");
            yield return ("  vs an F16 cache", $"{Units.Bytes(f16)}: compression {paged.CompressionRatio:F2}x");
        }
        else
        {
            yield return ("KV cache", $"{cache.Length} tokens, {cache.ByteCount:N0} bytes ({Units.Bytes(cache.ByteCount)}, float32)");
            yield return ("  as an F16 cache", Units.Bytes(f16));
        }
    }
}
