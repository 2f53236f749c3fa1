using System.Text.Json;

namespace KvSharp.Tests.Reference;

/// <summary>One prompt of a ../shared/reference/*.json file produced by llama.cpp or transformers.</summary>
/// <param name="Prompt">The prompt text.</param>
/// <param name="PromptIds">Its token ids (with BOS when the tokenizer adds one).</param>
/// <param name="GreedyIds">The greedy continuation.</param>
/// <param name="Top20">Per step of the first steps: (token, logit) pairs, highest first.</param>
public sealed record ReferenceOutput(string Prompt, int[] PromptIds, int[] GreedyIds, (int Token, double Logit)[][] Top20)
{
    /// <summary>Reads the "results" of a reference file.</summary>
    public static IReadOnlyList<ReferenceOutput> Load(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var list = new List<ReferenceOutput>();
        foreach (var r in doc.RootElement.GetProperty("results").EnumerateArray())
        {
            int[] Ids(string name) => r.GetProperty(name).EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var top = r.GetProperty("top20_logits_first_steps").EnumerateArray()
                .Select(step => step.EnumerateArray().Select(p => (p[0].GetInt32(), p[1].GetDouble())).ToArray())
                .ToArray();
            list.Add(new ReferenceOutput(r.GetProperty("prompt").GetString()!, Ids("prompt_ids"), Ids("greedy_ids"), top));
        }
        return list;
    }
}
