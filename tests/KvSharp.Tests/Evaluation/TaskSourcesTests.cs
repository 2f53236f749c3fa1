using KvSharp.Evaluation.Running;
using KvSharp.Evaluation.Tasks;
using KvSharp.Evaluation.Tasks.LEval;
using KvSharp.Generation;
using KvSharp.Tokenization;

namespace KvSharp.Tests.Evaluation;

/// <summary>L-Eval documents, SCBench-style shared contexts and text continuations as samples; shared contexts run on the needle model.</summary>
public sealed class TaskSourcesTests
{
    private static readonly Lazy<ITokenizer> NeedleTokenizer = new(() => TokenizerLoader.FromDirectory(RepoPaths.SharedFile("models", "kvsharp-needle-16m")));

    private static TaskOptions Options(int samples, int length) =>
        new(RepoPaths.SharedFile("data"), NeedleTokenizer.Value, 4096, samples, length, 5);

    [Fact]
    public void LEvalQuality_IsOneMultipleChoiceSamplePerDocumentThatFitsTheContext()
    {
        var samples = TaskCatalog.Load("leval:quality", Options(2, 4096));
        Assert.Equal(2, samples.Count);
        var first = File.ReadLines(RepoPaths.SharedFile("data", "leval", "Closed-ended-tasks", "quality.jsonl")).First();
        var doc = System.Text.Json.Nodes.JsonNode.Parse(first)!;
        var instructions = doc["instructions"]!.AsArray();
        Assert.Equal(instructions.Count, samples[0].Queries.Count);
        Assert.Equal(ScoreKind.Choice, samples[0].Score);
        Assert.Equal(doc["outputs"]![0]!.GetValue<string>(), samples[0].Queries[0].Outputs[0]);
        Assert.Equal(LEvalTasks.Question(instructions[0]!.GetValue<string>()), samples[0].Queries[0].Question);
        foreach (var s in samples)
        {
            int longest = s.Queries.Max(q => NeedleTokenizer.Value.Encode(q.Question, addSpecial: false).Length);
            Assert.True(NeedleTokenizer.Value.Encode(s.Context).Length + longest + s.MaxNewTokens <= 4096);
        }
        // The document was longer than the context: cut in the middle, its start kept.
        string text = doc["input"]!.GetValue<string>();
        Assert.Contains(text[..200], samples[0].Context, StringComparison.Ordinal);
        Assert.True(samples[0].Context.Length < text.Length);
    }

    [Fact]
    public void LEvalSummaries_AreScoredByRougeAndRunToABlankLine()
    {
        var sample = Assert.Single(TaskCatalog.Load("leval:news_summ", Options(1, 4096)));
        var doc = System.Text.Json.Nodes.JsonNode.Parse(File.ReadLines(RepoPaths.SharedFile("data", "leval", "Open-ended-tasks", "news_summ.jsonl")).First())!;
        Assert.Equal(ScoreKind.RougeL, sample.Score);
        Assert.Equal("\n\n", sample.StopString);
        Assert.Equal(doc["outputs"]![0]!.GetValue<string>(), sample.Queries[0].Outputs[0]);
        Assert.Equal("\n", TaskCatalog.Load("leval:quality", Options(1, 4096))[0].StopString);
    }

    [Fact]
    public void UnknownTaskSpecs_AreErrorsNamingThem()
    {
        Assert.Contains("bogus", Assert.Throws<KvSharpException>(() => TaskCatalog.Load("bogus:x", Options(1, 512))).Message, StringComparison.Ordinal);
        Assert.Contains("gsm100", Assert.Throws<KvSharpException>(() => TaskCatalog.Load("leval:gsm100", Options(1, 512))).Message, StringComparison.Ordinal);
        Assert.Contains("xx", Assert.Throws<KvSharpException>(() => TaskCatalog.Load("needle_eval:xx", Options(1, 512))).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void SharedContext_AnswersEveryQuestionAgainstOnePrefill()
    {
        var samples = TaskCatalog.Load("shared:3", Options(1, 640));
        var sample = Assert.Single(samples);
        Assert.Equal(3, sample.Queries.Count);
        Assert.Equal(ContextSharing.MultiRequest, sample.Sharing);
        foreach (var q in sample.Queries)
            Assert.Contains($"is: {q.Outputs[0]}.", sample.Context, StringComparison.Ordinal);
        Assert.Equal(3, sample.Queries.Select(q => q.Outputs[0]).Distinct().Count());

        using var model = LanguageModel.Load(RepoPaths.SharedFile("models", "kvsharp-needle-16m"));
        var requests = new EvalRunner(model).Run(sample, NoCompression.Instance);
        Assert.Equal(1.0, requests.Score); // a short noise haystack: the needle model retrieves every fact
        Assert.All(requests.Queries, q => Assert.Equal(q.Expected[0], q.Answer.Trim().TrimEnd('.')));

        // As turns, every answer stays in the cache and the next question follows it: same facts, same answers.
        var turns = new EvalRunner(model).Run(sample with { Sharing = ContextSharing.MultiTurn }, NoCompression.Instance);
        Assert.Equal(requests.Queries.Select(q => q.Answer), turns.Queries.Select(q => q.Answer));
    }

    [Fact]
    public void Continuations_SplitDocumentsAtASentence()
    {
        var samples = TaskCatalog.Load("lm:tinystories", Options(3, 4096));
        Assert.Equal(3, samples.Count);
        var lines = File.ReadAllLines(RepoPaths.SharedFile("data", "misc", "tinystories_valid_excerpt.txt"));
        foreach (var s in samples)
        {
            Assert.Empty(s.Queries);
            Assert.Contains(lines, l => l.Trim().StartsWith(s.Context + s.Continuation, StringComparison.Ordinal));
            Assert.Matches("[.!?\"]$", s.Context);
            Assert.StartsWith(" ", s.Continuation);
        }
    }
}
