namespace KvSharp.Cache.Paged;

/// <summary>Flash-decoding split of <see cref="PagedKvCache"/>'s attention: long heads cut into segments on several threads.</summary>
public sealed partial class PagedKvCache
{
    /// <summary>Fewest blocks a segment gets: below that, dispatch and merging cost more than the parallelism gains.</summary>
    private const int MinBlocksPerSegment = 16;

    /// <summary>Jobs per thread the split aims for (a shared machine's threads do not all run at the same speed).</summary>
    private const int JobsPerThread = 4;

    /// <summary>
    /// Decode (one run of positions): with fewer KV heads than <see cref="JobsPerThread"/> × threads, each head's blocks
    /// are cut into segments attended in parallel (each leaving its softmax state: max, sum, unnormalized output), then
    /// merged per head. Returns false, doing nothing, when splitting would not add parallelism.
    /// </summary>
    private bool TryAttendSplit(int layer, float[] q, int count, int firstPosition, float[] o, float[]? lse)
    {
        int threads = Compute.Cpu.CpuThreads.Count, target = threads * JobsPerThread;
        if (threads < 2 || _kvHeads >= target) return false;
        int longest = 0;
        for (int g = 0; g < _kvHeads; g++) longest = Math.Max(longest, _stores[StoreLayer(layer) * _kvHeads + g].Blocks.Count);
        int segments = Math.Min((target + _kvHeads - 1) / _kvHeads, longest / MinBlocksPerSegment);
        if (segments < 2) return false;

        int group = _heads / _kvHeads, hd = _headDim, qRow = _heads * hd, rows = count * group, span = (count - 1) * qRow + group * hd;
        var max = new float[_kvHeads * segments * rows];
        var sum = new float[max.Length];
        var acc = new float[max.Length * hd];
        Compute.Cpu.CpuThreads.For(_kvHeads * segments, 1, (start, end) =>
        {
            for (int job = start; job < end; job++)
            {
                int g = job / segments, k = job % segments;
                var store = _stores[StoreLayer(layer) * _kvHeads + g];
                int blocks = store.Blocks.Count;
                PagedAttention.AttendSegment(store, new ReadOnlySpan<float>(q, g * group * hd, span), qRow, count, group, hd,
                    firstPosition, blocks * k / segments, blocks * (k + 1) / segments, k == segments - 1,
                    max.AsSpan(job * rows, rows), sum.AsSpan(job * rows, rows), acc.AsSpan(job * rows * hd, rows * hd));
            }
        });
        for (int g = 0; g < _kvHeads; g++)
        {
            int slot = g * segments * rows;
            PagedAttention.Merge(segments, count, group, hd, max.AsSpan(slot, segments * rows), sum.AsSpan(slot, segments * rows),
                acc.AsSpan(slot * hd, segments * rows * hd), o.AsSpan(g * group * hd, span), qRow,
                lse == null ? default : lse.AsSpan(g * group, (count - 1) * _heads + group), _heads);
        }
        return true;
    }
}
