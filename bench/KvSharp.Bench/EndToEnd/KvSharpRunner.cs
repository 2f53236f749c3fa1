using System.Diagnostics;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Bench.EndToEnd;

/// <summary>KvSharp's side of the end-to-end comparison: the same GGUF, token counts and thread count as llama.cpp.</summary>
internal static class KvSharpRunner
{
    public static SpeedResult Measure(string ggufPath, int promptTokens, int decodeTokens)
    {
        using var weights = ModelLoader.Load(ggufPath);
        var model = new Transformer(weights);
        int vocab = weights.Config.VocabSize;

        // Warm-up: JIT, first-touch of the mapped weights, worker start; excluded as for llama.cpp.
        using (var warm = model.CreateCache(8)) model.Forward([1], warm);

        var prompt = Enumerable.Range(0, promptTokens).Select(i => LlamaCppPeer.TokenAt(i, vocab)).ToArray();
        using var cache = model.CreateCache(promptTokens + decodeTokens + 8);
        var sw = Stopwatch.StartNew();
        model.Forward(prompt, cache);
        double prefill = sw.Elapsed.TotalSeconds;

        sw.Restart();
        for (int i = 0; i < decodeTokens; i++) model.Forward([LlamaCppPeer.TokenAt(promptTokens + i, vocab)], cache);
        double decode = sw.Elapsed.TotalSeconds;
        return new SpeedResult(promptTokens / prefill, decodeTokens / decode);
    }
}
