using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Compression.Sessions;
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

    /// <summary>
    /// What ClusterKV's decode steps read over <paramref name="answers"/>: tokens attended per step and (layer, KV head)
    /// against the tokens stored, and the float32 copy it keeps besides the cache (it evicts nothing, so no bytes are saved).
    /// </summary>
    public static string Recall(IReadOnlyList<RecallStatistics> answers)
    {
        long steps = answers.Sum(a => a.DecodeSteps);
        var stepped = answers.Where(a => a.DecodeSteps > 0).ToList();
        double attended = stepped.Sum(a => a.AttendedTokens * a.DecodeSteps) / steps, full = stepped.Sum(a => a.FullTokens * a.DecodeSteps) / steps;
        string read = steps == 0 ? "no decode step (the questions' own pass attends every token)"
            : $"{attended:F0} of {full:F0} tokens read per decode step and (layer, KV head) ({attended / full:P0}) over {steps} steps";
        return $"{read}; every byte kept, plus a float32 copy of {answers[0].CopyBytes:N0} bytes ({Units.Bytes(answers[0].CopyBytes)})";
    }
}
