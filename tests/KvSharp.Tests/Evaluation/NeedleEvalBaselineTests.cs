using KvSharp.Evaluation.Running;
using KvSharp.Evaluation.Tasks;
using KvSharp.Generation;

namespace KvSharp.Tests.Evaluation;

/// <summary>
/// The harness on the needle model with a full cache reproduces the float32 reference answers stored in
/// eval_public.jsonl (produced by Hugging Face transformers, greedy): prompts, tokenization, prefill/question split,
/// greedy decoding and scoring all have to be right for the answers and scores to match.
/// </summary>
public sealed class NeedleEvalBaselineTests
{
    private static string EvalFile => RepoPaths.SharedFile("data", "needle_eval", "eval_public.jsonl");

    private static string Model => RepoPaths.SharedFile("models", "kvsharp-needle-16m");

    [Fact]
    public void FullCacheReproducesTheBaselineAnswersOnShortSamples()
    {
        // The two shortest records of the two retrieval tasks: one single-value, one multi-key/value/query.
        var samples = new List<EvalSample>();
        foreach (var task in new[] { "niah_single", "niah_mixed" })
            samples.AddRange(NeedleEvalSet.Load(EvalFile, [task], maxLength: 900).Take(1));
        Assert.Equal(2, samples.Count);

        using var model = LanguageModel.Load(Model);
        var runner = new EvalRunner(model);
        foreach (var sample in samples)
        {
            var outcome = runner.Run(sample, NoCompression.Instance);
            var q = Assert.Single(outcome.Queries);
            Assert.True(q.AgreesWithBaseline, $"{sample.Task}/{sample.Id}: '{q.Answer}' vs baseline '{q.BaselineAnswer}'");
            // RULER's string_match_all against the expected outputs, computed here independently of the scorer.
            double expected = sample.Queries[0].Outputs.Count(o => q.Answer.Contains(o, StringComparison.OrdinalIgnoreCase)) / (double)sample.Queries[0].Outputs.Count;
            Assert.Equal(expected, outcome.Score, 12);
            // The record's length is the reference tokenizer's count (BOS included): the split loses or adds no token.
            var (context, question) = runner.SplitTokens(sample.Context, sample.Queries[0].Question);
            Assert.Equal(sample.Length, context.Length + question.Length);
            Assert.Equal(context.Length, outcome.ContextTokens);
            Assert.Equal(outcome.KvBytesBefore, outcome.KvBytesAfter);
        }
    }

    [Fact]
    public void OwnGenerator_FedToTheNeedleModel_RetrievesLikeTheBaseline()
    {
        // The reference retrieves every single-value needle at ~1000 tokens (eval_public.jsonl: niah_single 33/33).
        // Our RULER prompts must be the format it was trained on for it to do as well on them.
        using var model = LanguageModel.Load(Model);
        var options = new TaskOptions(RepoPaths.SharedFile("data"), model.Tokenizer, model.Config.MaxContext, 2, 600, 11);
        var runner = new EvalRunner(model);
        foreach (var task in new[] { "ruler:niah_single_1", "ruler:niah_multikey_3" })
            foreach (var sample in TaskCatalog.Load(task, options))
            {
                var outcome = runner.Run(sample, NoCompression.Instance);
                Assert.True(outcome.Score == 1, $"{task}/{sample.Id}: '{outcome.Queries[0].Answer}', expected {sample.Queries[0].Outputs[0]}");
            }
    }
}
