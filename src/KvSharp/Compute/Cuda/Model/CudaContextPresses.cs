using KvSharp.Compression;
using KvSharp.Compression.Actions;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Quantization;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// Maps a CPU press (<see cref="Compression.Registry.PressRegistry"/>'s object) to the press the device runs on a
/// prefilled context (<c>kvsharp ask --device cuda</c>), or refuses it in one line naming it. The device runs every
/// scored eviction press whose scores it computes, under any budget (the CPU's <c>IBudget</c> chooses on the host):
/// SnapKV, DBudgetKV and TOVA (<see cref="CudaWindowPress"/>), H2O (<see cref="CudaH2oPress"/>), KVzip
/// (<see cref="CudaKvzipPress"/>), key-norm, StreamingLLM and random (<see cref="CudaAttentionFreePress"/>).
/// </summary>
public static class CudaContextPresses
{
    /// <summary>The scorers the device runs, for messages.</summary>
    public const string DeviceScorers = "snapkv, dbudgetkv, tova, h2o, kvzip, keynorm, streamingllm and random";

    /// <summary>The device press of <paramref name="press"/>.</summary>
    /// <exception cref="KvSharpException">The press does not run on the device (the message names it and says why), or is KVzip+.</exception>
    public static ICudaContextPress From(IKvPress press)
    {
        ArgumentNullException.ThrowIfNull(press);
        if (press is ScoredPress scored)
        {
            if (scored.Action is not EvictAction)
                throw new KvSharpException($"press {press.Text} does not run on the GPU: the device evicts the tokens a press does not keep, it does not {scored.Action.Name} them; use --device cpu");
            switch (scored.Scorer)
            {
                case SnapKvScorer snapKv: return new CudaWindowPress(snapKv, scored.Budget);
                case TovaScorer tova: return new CudaWindowPress(tova, scored.Budget);
                case H2oScorer h2o: return new CudaH2oPress(h2o, scored.Budget);
                case KvzipScorer { Plus: true }:
                    throw new KvSharpException($"press {press.Text}: KVzip+ does not run on the GPU (its value weights are computed from a CPU cache); use kvzip without plus, or --device cpu");
                case KvzipScorer kvzip: return new CudaKvzipPress(kvzip, scored.Budget);
                case var scorer when CudaAttentionFreePress.Scores(scorer): return new CudaAttentionFreePress(scorer, scored.Budget);
            }
        }
        if (press is KiviPress or KvTunerPress or MiKvPress or ZipVlPress or LeanKvPress or VidKvPress)
            throw new KvSharpException($"press {press.Text} quantizes the cache: on the GPU quantization is a --kv-cache format (e.g. --kv-cache int4 or int4:int2), " +
                "not a press; use --device cpu for this press");
        throw new KvSharpException($"press {press.Text} does not run on the GPU: the device presses a prefilled context with {DeviceScorers} " +
            "under any budget (e.g. snapkv+pyramid:keep=0.3); use --device cpu for the others");
    }
}
