using System.Diagnostics;
using LLama;
using LLama.Common;
using LLama.Native;

namespace KvSharp.Bench.EndToEnd;

/// <summary>
/// llama.cpp (the native build shipped in LLamaSharp.Backend.Cpu) measured on the same GGUF and
/// token counts as KvSharp, so both numbers come from the same run on the same machine.
/// </summary>
internal static class LlamaCppPeer
{
    /// <summary>Prefills <paramref name="promptTokens"/> tokens then decodes <paramref name="decodeTokens"/> one at a time.</summary>
    public static SpeedResult Measure(string ggufPath, int promptTokens, int decodeTokens, int threads)
    {
        var p = new ModelParams(ggufPath)
        {
            ContextSize = (uint)(promptTokens + decodeTokens + 8),
            BatchSize = (uint)Math.Max(512, promptTokens),
            UBatchSize = 512,
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
        };
        using var weights = LLamaWeights.LoadFromFile(p);
        using var ctx = weights.CreateContext(p);
        int vocab = weights.Vocab.Count;
        var batch = new LLamaBatch();

        // Warm-up (first-touch page faults of the weights, thread start) is excluded from the timing.
        batch.Add((LLamaToken)(1), 0, LLamaSeqId.Zero, true);
        ctx.Decode(batch);
        ctx.NativeHandle.MemoryClear(true);
        batch.Clear();

        double prefill = double.MaxValue, decode = double.MaxValue;
        for (int rep = 0; rep < KvSharpRunner.Repetitions; rep++)
        {
            ctx.NativeHandle.MemoryClear(true);
            batch.Clear();
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < promptTokens; i++)
                batch.Add((LLamaToken)TokenAt(i, vocab), i, LLamaSeqId.Zero, i == promptTokens - 1);
            Check(ctx.Decode(batch));
            prefill = Math.Min(prefill, sw.Elapsed.TotalSeconds);

            sw.Restart();
            for (int i = 0; i < decodeTokens; i++)
            {
                batch.Clear();
                batch.Add((LLamaToken)TokenAt(promptTokens + i, vocab), promptTokens + i, LLamaSeqId.Zero, true);
                Check(ctx.Decode(batch));
            }
            decode = Math.Min(decode, sw.Elapsed.TotalSeconds);
        }
        return new SpeedResult(promptTokens / prefill, decodeTokens / decode);
    }

    /// <summary>A deterministic token stream (the content doesn't change the cost of a dense model).</summary>
    public static int TokenAt(int i, int vocab) => (int)((i * 2654435761u + 17) % (uint)(vocab - 2)) + 2;

    private static void Check(DecodeResult r)
    {
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama.cpp decode failed: {r}");
    }
}

/// <summary>Prefill and decode throughput.</summary>
internal readonly record struct SpeedResult(double PrefillTokensPerSecond, double DecodeTokensPerSecond);
