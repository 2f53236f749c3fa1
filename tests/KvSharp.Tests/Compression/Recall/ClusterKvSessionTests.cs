using KvSharp.Cache;
using KvSharp.Compression.Recall;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Sessions;
using KvSharp.Evaluation.Running;
using KvSharp.Evaluation.Tasks;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;

namespace KvSharp.Tests.Compression.Recall;

/// <summary>ClusterKV as a <see cref="CompressedContext"/> press (what <c>kvsharp ask --press clusterkv...</c> runs).</summary>
public class ClusterKvSessionTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    private const string Context =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog Max. " +
        "One day, Lily saw a big red ball under a tree. She ran to the ball and kicked it very high. Max barked and ran after it. " +
        "Then the sun went down and Lily and Max went home to eat dinner with mom. The next morning, Lily woke up early. " +
        "She wanted to find the red ball again. She looked under the bed, in the garden and behind the big tree, but the ball was gone. " +
        "Lily was sad. Her friend Tom came to play. Tom said he saw a bird take the ball to the pond.";

    private static readonly string[] Questions = [" Lily said", " Then Max"];

    private static readonly GenerationOptions Answer = new() { MaxTokens = 12, Sampler = SamplerOptions.Greedy, StopStrings = ["\n"] };

    private static readonly CompressedContextOptions F32 = new() { Cache = new KvCacheSpec(KvSharp.Cache.Blocks.KvFormat.F32, KvSharp.Cache.Blocks.KvFormat.F32), MaxTokens = 512 };

    private const string Recall = "clusterkv:keep=0.2,clusters=12,iters=5,sinks=2";

    [Fact]
    public void Session_AnswersAsTheEvalClusterKvPathDoes()
    {
        using var model = LanguageModel.Load(Stories);
        var runner = new EvalRunner(model) { QuestionAware = false };
        var sample = new EvalSample("s", "story", Context, [.. Questions.Select(q => new EvalQuery(q, ["x"]))], ScoreKind.StringMatchAll, Answer.MaxTokens);
        var eval = runner.Run(sample, new PressCompressorFactory().Create("clusterkv:clusters=12,iters=5,sinks=2", 0.2));

        // The session gets the same tokens the runner prefills and asks.
        var (context, first) = runner.SplitTokens(Context, Questions[0]);
        var press = ContextPress.Parse(Recall);
        using var session = CompressedContext.Create(model, context, F32 with { Press = press.Press, Recall = press.Recall, MaxTokens = model.Config.MaxContext });
        var answers = new[] { session.Ask(first, Answer), session.Ask(model.Encode(Questions[1], addBos: false), Answer) };

        for (int i = 0; i < Questions.Length; i++) Assert.Equal(eval.Queries[i].Answer, answers[i].Generation.Text);
        foreach (var a in answers)
        {
            var r = a.Recall!;
            Assert.True(r.DecodeSteps > 0);
            // Nothing evicted: each (layer, KV head) stores the context; step k reads it, the question and k + 1 answer tokens.
            int question = (a == answers[0] ? first : model.Encode(Questions[1], addBos: false)).Length;
            Assert.Equal(context.Length + question + (r.DecodeSteps + 1) / 2.0, r.FullTokens, 9);
            Assert.InRange(r.AttendedTokens, 1, 0.6 * r.FullTokens); // decode read a fraction of it
            Assert.Equal(session.Cache.StoredTokens * model.Config.HeadDim * 2 * sizeof(float), r.CopyBytes);
            Assert.Equal(session.BytesBeforeCompression, a.CacheBytes); // ClusterKV keeps every byte
        }
        Assert.Equal(context.Length, session.Recall!.Length); // both questions were rolled back
    }

    [Theory]
    [InlineData(null, false)]
    [InlineData("keynorm:keep=0.5", false)]
    [InlineData("streamingllm:keep=0.4", true)]
    public void BudgetCoveringEveryToken_AnswersAsWithoutRecall(string? press, bool queryAware)
    {
        using var model = LanguageModel.Load(Stories);
        var pressed = press == null ? null : PressRegistry.Parse(press);
        var all = ContextPress.Parse((press == null ? "" : press + "+") + "clusterkv:tokens=100000,clusters=12,iters=5");
        Assert.Equal(pressed?.Text, all.Press?.Text);
        using var plain = CompressedContext.Create(model, Context, F32 with { Press = pressed, QueryAware = queryAware });
        using var recall = CompressedContext.Create(model, Context, F32 with { Press = all.Press, Recall = all.Recall, QueryAware = queryAware });
        foreach (var q in Questions)
        {
            var expected = plain.Ask(q, Answer);
            var actual = recall.Ask(q, Answer);
            Assert.Equal(expected.Generation.TokenIds, actual.Generation.TokenIds);
            Assert.Equal(expected.CacheBytes, actual.CacheBytes);
            Assert.Equal(actual.Recall!.FullTokens, actual.Recall.AttendedTokens, 9); // every token is read
        }
    }

    [Fact]
    public void Compress_ForksTheFullSessionWithRecall()
    {
        using var model = LanguageModel.Load(Stories);
        using var full = CompressedContext.Create(model, Context, F32);
        using var forked = full.Compress(ContextPress.Parse(Recall));
        using var fresh = CompressedContext.Create(model, Context, F32 with { Recall = ClusterKvOptions.Parse(Recall) });
        Assert.Equal(fresh.Ask(Questions[0], Answer).Generation.TokenIds, forked.Ask(Questions[0], Answer).Generation.TokenIds);
        Assert.Null(full.Recall);
        Assert.Throws<ArgumentException>(() => full.Compress(new ContextPress()));
    }

    [Fact]
    public void DecodePressUnderRecall_IsRefused()
    {
        using var model = LanguageModel.Load(Stories);
        using var session = CompressedContext.Create(model, Context, F32 with { Recall = ClusterKvOptions.Parse(Recall) });
        var e = Assert.Throws<KvSharpException>(() => session.Ask(Questions[0], Answer with { DecodeCompression = DecodePressRegistry.Parse("h2o:tokens=64") }));
        Assert.Contains("clusterkv", e.Message);
    }

    [Theory]
    [InlineData("clusterkv:budget=64", "unknown parameter 'budget'")]
    [InlineData("clusterkv:keep=0", "keep")]
    [InlineData("clusterkv+kvzip:keep=0.5", "clusterkv must come last")]
    [InlineData("clusterkv+clusterkv", "given twice")]
    [InlineData("kvzipp:keep=0.5+clusterkv", "unknown method 'kvzipp'")]
    public void BadText_NamesTheProblem(string text, string message)
    {
        var e = Assert.Throws<KvSharpException>(() => ContextPress.Parse(text));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Text_SplitsPressAndRecall()
    {
        var both = ContextPress.Parse("snapkv+pyramid:keep=0.3 + clusterkv:tokens=64");
        Assert.Equal(PressRegistry.Parse("snapkv+pyramid:keep=0.3").Text, both.Press!.Text);
        Assert.Equal(64, both.Recall!.Tokens);
        Assert.Equal($"{both.Press.Text}+{both.Recall.Text}", both.Text);
        Assert.Null(ContextPress.Parse("clusterkv").Press);
        Assert.Null(ContextPress.Parse("kvzip:keep=0.3").Recall);
        Assert.Equal("none", ContextPress.Parse(" none ").Text);
    }
}
