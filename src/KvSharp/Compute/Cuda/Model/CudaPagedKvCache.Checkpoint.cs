using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// Rolling appends back on the device: a checkpoint copies what appending changes (the descriptor tables, the head
/// lengths, the pool's top and the residual slots) and restoring it forgets every token appended since. Appends only
/// write their heads' residuals, fresh blocks above the top and new descriptors, so this is exact and costs the
/// tables and residuals, not the pool: KVzip's repeat runs and the answers of <c>kvsharp ask --device cuda</c> are
/// run after the context and dropped this way.
/// </summary>
public sealed partial class CudaPagedKvCache
{
    private int _layoutVersion; // bumped by whatever rewrites the pool (eviction, re-quantization): checkpoints before it are void

    /// <summary>The state a <see cref="Restore"/> goes back to (device copies; dispose when done).</summary>
    public sealed class Checkpoint : IDisposable
    {
        internal Checkpoint(CudaPagedKvCache cache, DeviceBuffer desc, DeviceBuffer blocks, DeviceBuffer tokens, DeviceBuffer state, DeviceBuffer residuals)
        {
            Cache = cache;
            (Desc, Blocks, Tokens, State, Residuals) = (desc, blocks, tokens, state, residuals);
            Lengths = Enumerable.Range(0, cache.Batch).Select(cache.LengthOf).ToArray();
            Version = cache._layoutVersion;
        }

        internal CudaPagedKvCache Cache { get; }
        internal DeviceBuffer Desc { get; }
        internal DeviceBuffer Blocks { get; }
        internal DeviceBuffer Tokens { get; }
        internal DeviceBuffer State { get; }
        internal DeviceBuffer Residuals { get; }
        internal int[] Lengths { get; }
        internal int Version { get; }

        /// <inheritdoc />
        public void Dispose()
        {
            foreach (var b in new[] { Desc, Blocks, Tokens, State, Residuals }) b.Dispose();
        }
    }

    /// <summary>Copies the tables, lengths, pool top and residual slots on the device so that <see cref="Restore"/> can drop what is appended after.</summary>
    public Checkpoint Save()
    {
        var buffers = new List<DeviceBuffer>();
        try
        {
            DeviceBuffer Copy(DeviceBuffer source, long bytes)
            {
                var b = Device.Allocate(bytes);
                buffers.Add(b);
                b.CopyFromAsync(source, bytes);
                return b;
            }
            return new Checkpoint(this, Copy(_desc, _desc.ByteLength), Copy(_headBlocks, _headBlocks.ByteLength), Copy(_headTokens, _headTokens.ByteLength),
                Copy(_state, _state.ByteLength), Copy(_pool, (long)ReservedUnits * 16));
        }
        catch
        {
            foreach (var b in buffers) b.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Forgets every token appended since <paramref name="checkpoint"/> was saved: the cache is again, byte for byte, what it
    /// was then (the blocks appends encoded become free pool space).
    /// </summary>
    /// <exception cref="InvalidOperationException">The checkpoint is another cache's, the pool was rewritten since (eviction,
    /// re-quantization), statistics are being collected, or a decode press keeps running sums (<see cref="StartRunningSums"/>).</exception>
    public void Restore(Checkpoint checkpoint)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        if (checkpoint.Cache != this) throw new InvalidOperationException("the checkpoint was saved from another cache");
        if (checkpoint.Version != _layoutVersion) throw new InvalidOperationException("the cache was evicted or re-quantized after the checkpoint: it cannot go back to it");
        if (_statistics != null) throw new InvalidOperationException("cannot restore a checkpoint while attention statistics are being collected");
        RefuseRunningSums("restore a checkpoint");
        _desc.CopyFromAsync(checkpoint.Desc, _desc.ByteLength);
        _headBlocks.CopyFromAsync(checkpoint.Blocks, _headBlocks.ByteLength);
        _headTokens.CopyFromAsync(checkpoint.Tokens, _headTokens.ByteLength);
        _state.CopyFromAsync(checkpoint.State, _state.ByteLength);
        _pool.CopyFromAsync(checkpoint.Residuals, (long)ReservedUnits * 16);
        for (int s = 0; s < Batch; s++) SetLength(s, checkpoint.Lengths[s]);
        Device.Synchronize();
    }
}
