using System.Text.Json;
using KvSharp.Formats.Gguf;
using KvSharp.Models;

namespace KvSharp.Tests.Models;

public class ScratchStoriesTest
{
    [Fact]
    public void GreedyMatchesLlamaCpp()
    {
        var g = GgufFile.Open(RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf"));
        var cfg = new ModelConfig
        {
            Architecture = "llama", VocabSize = 512, HiddenSize = 64, IntermediateSize = (int)g.FindTensor("blk.0.ffn_gate.weight")!.Rows,
            NumLayers = 5, NumHeads = 8, NumKvHeads = 4, HeadDim = 8, RopeStyle = RopeStyle.Interleaved,
            RmsNormEps = g.Get<float>("llama.attention.layer_norm_rms_epsilon", 1e-5f), MaxContext = 512,
        };
        var w = new ModelWeights(cfg, "stories", g.Tensors.ToDictionary(t => t.Name, t => t), g);
        var tf = new Transformer(w);
        using var doc = JsonDocument.Parse(File.ReadAllText(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json")));
        foreach (var r in doc.RootElement.GetProperty("results").EnumerateArray())
        {
            var prompt = r.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var expected = r.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var cache = tf.CreateCache(512);
            var logits = tf.Forward(prompt, cache);
            var got = new List<int>();
            for (int i = 0; i < expected.Length; i++)
            {
                int best = 0;
                for (int j = 1; j < logits.Length; j++) if (logits[j] > logits[best]) best = j;
                got.Add(best);
                if (i + 1 < expected.Length) logits = tf.Forward(new[] { best }, cache);
            }
            Assert.Equal(expected, got);
        }
    }
}
