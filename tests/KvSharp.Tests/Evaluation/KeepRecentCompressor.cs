using KvSharp.Evaluation.Running;

namespace KvSharp.Tests.Evaluation;

/// <summary>
/// A stand-in press for the harness tests (StreamingLLM's rule): keeps the protected prefix and the most recent
/// tokens, <c>keep</c> of the context in all, in every (layer, KV head).
/// </summary>
internal sealed class KeepRecentCompressor(double keep) : ICacheCompressor
{
    public string Name => FormattableString.Invariant($"recent:keep={keep}");

    public void Compress(CompressionInput input)
    {
        int n = input.ContextTokens.Count;
        int kept = Math.Max(input.ProtectedPrefix + 1, (int)Math.Round(keep * n));
        for (int layer = 0; layer < input.Cache.Layers; layer++)
            for (int head = 0; head < input.Cache.KvHeads; head++)
            {
                var positions = input.Cache.Positions(layer, head);
                var evict = new bool[positions.Count];
                for (int i = 0; i < evict.Length; i++)
                    evict[i] = positions[i] >= input.ProtectedPrefix && positions[i] < n - (kept - input.ProtectedPrefix);
                input.Cache.Evict(layer, head, evict);
            }
    }
}

/// <summary>The full cache plus <c>recent</c> (<see cref="KeepRecentCompressor"/>).</summary>
internal sealed class TestCompressors : FullCacheFactory
{
    public override ICacheCompressor Create(string press, double keepRatio) =>
        press == "recent" ? new KeepRecentCompressor(keepRatio) : base.Create(press, keepRatio);
}
