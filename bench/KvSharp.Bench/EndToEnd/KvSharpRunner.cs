using System.Diagnostics;
using KvSharp.Compute.Cpu;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Bench.EndToEnd;

/// <summary>KvSharp's side of the end-to-end comparison: the same GGUF, token counts and thread count as llama.cpp.</summary>
internal static class KvSharpRunner
{
    /// <summary>Runs per measurement; the best is reported (the least disturbed by the rest of the machine).</summary>
    public const int Repetitions = 3;

    public static SpeedResult Measure(string ggufPath, int promptTokens, int decodeTokens, CpuNumerics numerics = CpuNumerics.Fast)
    {
        using var weights = ModelLoader.Load(ggufPath);
        var model = new Transformer(weights, numerics);
        int vocab = weights.Config.VocabSize;

        // Warm-up: tiered JIT needs ~30 calls of each method and a background compile before the optimized
        // code runs; also first-touch of the mapped weights and worker start. Excluded, as for llama.cpp.
        for (int round = 0; round < 2; round++)
        {
            using var warm = model.CreateCache(Math.Min(promptTokens, 64) + 48);
            model.Forward(Enumerable.Range(0, Math.Min(promptTokens, 64)).Select(i => LlamaCppPeer.TokenAt(i, vocab)).ToArray(), warm);
            for (int i = 0; i < 40; i++) model.Forward([LlamaCppPeer.TokenAt(i, vocab)], warm);
            Thread.Sleep(300);
        }

        var prompt = Enumerable.Range(0, promptTokens).Select(i => LlamaCppPeer.TokenAt(i, vocab)).ToArray();
        double prefill = double.MaxValue, decode = double.MaxValue;
        for (int rep = 0; rep < Repetitions; rep++)
        {
            using var cache = model.CreateCache(promptTokens + decodeTokens + 8);
            var sw = Stopwatch.StartNew();
            model.Forward(prompt, cache);
            prefill = Math.Min(prefill, sw.Elapsed.TotalSeconds);
            sw.Restart();
            for (int i = 0; i < decodeTokens; i++) model.Forward([LlamaCppPeer.TokenAt(promptTokens + i, vocab)], cache);
            decode = Math.Min(decode, sw.Elapsed.TotalSeconds);
        }
        return new SpeedResult(promptTokens / prefill, decodeTokens / decode);
    }
}
