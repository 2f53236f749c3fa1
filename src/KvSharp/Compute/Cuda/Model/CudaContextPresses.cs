using KvSharp.Cache.Blocks;
using KvSharp.Compression;
using KvSharp.Compression.Actions;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Presses;
using KvSharp.Compression.Quantization;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compute.Cuda.Model;

/// <summary>
/// Maps a CPU press (<see cref="Compression.Registry.PressRegistry"/>'s object) to the press the device runs on a
/// prefilled context (<c>kvsharp ask --device cuda</c>), or refuses it in one line naming it and what is missing. The
/// device runs every scored eviction press whose scores it computes, under any budget (the CPU's <c>IBudget</c> chooses
/// on the host): SnapKV, DBudgetKV, TOVA and R-KV (<see cref="CudaWindowPress"/>), H2O and the ZipVL scorer
/// (<see cref="CudaH2oPress"/>), KVzip (<see cref="CudaKvzipPress"/>), KV-Compress (<see cref="CudaKvCompressPress"/>), key-norm, StreamingLLM and random
/// (<see cref="CudaAttentionFreePress"/>); the quantization presses KIVI, KVTuner, MiKV, ZipVL and LeanKV as device
/// re-quantization (<see cref="CudaQuantizationPress"/>); VidKV (<see cref="CudaVidKvPress"/>); KVCrush over any of those scorers (<see cref="CudaKvCrushPress"/>);
/// and sequences of those (<see cref="CudaSequencePress"/>).
/// </summary>
public static class CudaContextPresses
{
    /// <summary>The scorers the device runs, for messages.</summary>
    public const string DeviceScorers = "snapkv, dbudgetkv, tova, rkv, h2o, zipvl, kvzip, kvzip+, kvcompress, keynorm, streamingllm and random";

    /// <summary>The device press of <paramref name="press"/>.</summary>
    /// <exception cref="KvSharpException">The press does not run on the device (the message names it and says why).</exception>
    public static ICudaContextPress From(IKvPress press)
    {
        ArgumentNullException.ThrowIfNull(press);
        switch (press)
        {
            case ScoredPress scored:
                if (scored.Action is not EvictAction)
                    throw new KvSharpException($"press {press.Text} does not run on the GPU: the device evicts the tokens a press does not keep, it does not {scored.Action.Name} them; use --device cpu");
                return Scoring(press, scored.Scorer, scored.Budget);
            case SequentialPress sequence:
                return Sequence(sequence);
            case KvCrushPress crush:
                if (crush.Inner.Action is not EvictAction)
                    throw new KvSharpException($"press {press.Text} does not run on the GPU: the device evicts the tokens a press does not keep, it does not {crush.Inner.Action.Name} them; use --device cpu");
                return new CudaKvCrushPress(crush, Scoring(press, crush.Inner.Scorer, crush.Inner.Budget));
            case KiviPress kivi:
                return new CudaQuantizationPress(kivi, null, input =>
                {
                    kivi.CheckGeometry(input.Cache.Options, input.Cache.Config.HeadDim);
                    return ([.. input.Positions.Select(p => kivi.Tiers(p.Length))], [FormatPair.Ints(kivi.Bits, kivi.Bits)]);
                });
            case KvTunerPress tuner:
                return new CudaQuantizationPress(tuner, null, input => KvTunerTiers(tuner, input));
            case MiKvPress mikv:
                if (mikv.PerTokenKeys && (mikv.High.Keys.IsQuantized() || mikv.Low.Keys.IsQuantized()))
                    throw new KvSharpException($"press {press.Text} does not run on the GPU: keys=token stores keys under a per-channel balance, which the device's kernels do not apply; use keys=channel, or --device cpu");
                RefuseVidKv(press, mikv.High, mikv.Low);
                return new CudaQuantizationPress(mikv, Scoring(press, mikv.Scorer, mikv.RankingBudget), input =>
                    ([.. CudaPressSelection.KeepMasks(mikv.RankingBudget, input.Scores!, input.First).Select(MiKvPress.Tiers)], [mikv.High, mikv.Low]));
            case ZipVlPress zipVl:
                RefuseVidKv(press, zipVl.High, zipVl.Low);
                return new CudaQuantizationPress(zipVl, Scoring(press, zipVl.Scorer, Unused), input => ZipVlTiers(zipVl, input));
            case LeanKvPress leanKv:
                RefuseVidKv(press, leanKv.Important, leanKv.Less);
                return new CudaQuantizationPress(leanKv, Scoring(press, leanKv.Scorer, Unused), input =>
                    ([.. Enumerable.Range(0, input.Positions.Length).Select(h => leanKv.Tiers(input.Scores![h], input.First[h]))], leanKv.Formats));
            case VidKvPress vidKv:
                return new CudaVidKvPress(vidKv);
        }
        throw new KvSharpException($"press {press.Text} does not run on the GPU: the device presses a prefilled context with {DeviceScorers} " +
            "under any budget (e.g. snapkv+pyramid:keep=0.3), kvcrush over them, the quantization presses kivi, kvtuner, mikv, zipvl and leankv, and sequences of those; use --device cpu for the others");
    }

    /// <summary>A budget for presses whose scores rank tiers instead (ZipVL, LeanKV): never allocates.</summary>
    private static readonly IBudget Unused = new UniformBudget(KeepTarget.Ratio(1));

    /// <summary>The device press of a scored eviction <paramref name="press"/> (or of a quantization press's ranking).</summary>
    private static ICudaScoredPress Scoring(IKvPress press, IScorer scorer, IBudget budget) => scorer switch
    {
        SnapKvScorer snapKv => new CudaWindowPress(snapKv, budget),
        TovaScorer tova => new CudaWindowPress(tova, budget),
        RkvScorer rkv => new CudaWindowPress(rkv, budget),
        H2oScorer h2o => new CudaH2oPress(h2o, budget),
        ZipVlScorer zipVl => new CudaH2oPress(zipVl, budget),
        KvzipScorer kvzip => new CudaKvzipPress(kvzip, budget),
        KvCompressScorer kvCompress => new CudaKvCompressPress(kvCompress, budget),
        _ when CudaAttentionFreePress.Scores(scorer) => new CudaAttentionFreePress(scorer, budget),
        _ => throw new KvSharpException($"press {press.Text} does not run on the GPU: the device scores with {DeviceScorers}, not {scorer.Text}; use --device cpu"),
    };

    /// <summary>Each press of the sequence on the device, in order; refused as a whole when one is refused or a later one needs a fresh prefill.</summary>
    private static CudaSequencePress Sequence(SequentialPress sequence)
    {
        var presses = new List<ICudaContextPress>();
        foreach (var stage in sequence.Presses)
        {
            ICudaContextPress device;
            try
            {
                device = From(stage);
            }
            catch (KvSharpException e)
            {
                throw new KvSharpException($"press {sequence.Text} does not run on the GPU: one of its presses is refused ({e.Message})", e);
            }
            if (presses.Count > 0 && device.NeedsFreshPrefill)
                throw new KvSharpException($"press {sequence.Text} does not run on the GPU: {stage.Text} scores a fresh prefill of the context (attention statistics collected while it goes in, or KVzip's runs over it) " +
                    "or encodes its whole blocks (VidKV), so on the device it can only be a sequence's first press; put it first, or use --device cpu");
            if (presses.Count > 0 && presses[^1] is CudaVidKvPress)
                throw new KvSharpException($"press {sequence.Text} does not run on the GPU: the device neither evicts nor re-quantizes the VidKV blocks {presses[^1].Text} leaves, so no press can follow it; use --device cpu");
            presses.Add(device);
        }
        return new CudaSequencePress(presses);
    }

    /// <summary>Refuses VidKV formats among a press's tiers, which the device does not encode.</summary>
    private static void RefuseVidKv(IKvPress press, params FormatPair[] pairs)
    {
        foreach (var pair in pairs.Where(p => p.Keys.IsVidKv() || p.Values.IsVidKv()))
            throw new KvSharpException($"press {press.Text} does not run on the GPU: the device encodes VidKV blocks for the vidkv press alone (a fresh prefill's whole blocks), not as a tier's {pair}; use --device cpu");
    }

    /// <summary>KVTuner: every token of layer l in the layer's pair (one tier per distinct pair).</summary>
    private static (byte[][], IReadOnlyList<FormatPair?>) KvTunerTiers(KvTunerPress tuner, CudaQuantizationPress.TierInput input)
    {
        var config = input.Cache.Config;
        tuner.Config.CheckLayers(config.NumLayers, tuner.File);
        var pairs = tuner.Config.Layers.Select(p => p.Formats).Distinct().ToList();
        var tiers = input.Positions.Select((p, h) => Enumerable.Repeat((byte)pairs.IndexOf(tuner.Config.Layers[h / config.NumKvHeads].Formats), p.Length).ToArray());
        return ([.. tiers], [.. pairs.Select(p => (FormatPair?)p)]);
    }

    /// <summary>ZipVL: each layer's heads share the layer's ratio of high-precision tokens.</summary>
    private static (byte[][], IReadOnlyList<FormatPair?>) ZipVlTiers(ZipVlPress zipVl, CudaQuantizationPress.TierInput input)
    {
        int kvHeads = input.Cache.Config.NumKvHeads;
        var tiers = new byte[input.Positions.Length][];
        for (int l = 0; l < input.Cache.Config.NumLayers; l++)
        {
            var layer = zipVl.LayerTiers([.. Enumerable.Range(0, kvHeads).Select(h => input.Scores![l, h])], input.First[(l * kvHeads)..((l + 1) * kvHeads)]);
            layer.CopyTo(tiers, l * kvHeads);
        }
        return (tiers, [zipVl.High, zipVl.Low]);
    }
}
