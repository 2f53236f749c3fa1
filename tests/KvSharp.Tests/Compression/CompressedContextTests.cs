using KvSharp.Compression.Registry;
using KvSharp.Compression.Sessions;
using KvSharp.Generation;
using KvSharp.Generation.Sampling;

namespace KvSharp.Tests.Compression;

/// <summary>Multi-question sessions over one compressed context.</summary>
public class CompressedContextTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    private const string Context =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog Max. " +
        "One day, Lily saw a big red ball under a tree. She ran to the ball and kicked it very high. Max barked and ran after it. " +
        "Then the sun went down and Lily and Max went home to eat dinner with mom. The next morning, Lily woke up early. " +
        "She wanted to find the red ball again. She looked under the bed, in the garden and behind the big tree, but the ball was gone. " +
        "Lily was sad. Her friend Tom came to play. Tom said he saw a bird take the ball to the pond. They ran to the pond together " +
        "and found the ball floating on the water. Tom used a long stick to get it back. Lily hugged Tom and said thank you.";

    private static readonly string[] Questions = [" Lily said", " Max was", " The ball"];

    private static readonly GenerationOptions Greedy = new() { MaxTokens = 6, Sampler = SamplerOptions.Greedy };

    [Fact]
    public void ManyQuestions_AnswerAsFreshSessionsDo_AndCompressionFreesMemory()
    {
        using var model = LanguageModel.Load(Stories);
        var options = new CompressedContextOptions { Press = PressRegistry.Parse("keynorm:keep=0.25"), MaxTokens = 400 };
        using var session = CompressedContext.Create(model, Context, options);
        // Whole blocks go back to the pool (a head's last block may stay partly filled).
        Assert.InRange(session.Cache.PoolLiveBytes, 1, 0.45 * session.PoolBytesBeforeCompression);
        Assert.InRange(session.Cache.ByteCount, 1, 0.45 * session.BytesBeforeCompression);
        Assert.Equal(1, session.ProtectedPrefix); // the BOS token

        var answers = Questions.Select(q => session.Ask(q, Greedy).Generation.TokenIds.ToArray()).ToList();
        // The same questions in reverse order: each one sees the same compressed context.
        var reversed = Questions.Reverse().Select(q => session.Ask(q, Greedy).Generation.TokenIds.ToArray()).Reverse().ToList();
        for (int i = 0; i < Questions.Length; i++)
        {
            using var fresh = CompressedContext.Create(model, Context, options);
            Assert.Equal(fresh.Ask(Questions[i], Greedy).Generation.TokenIds, answers[i]);
            Assert.Equal(answers[i], reversed[i]);
        }
        Assert.Equal(session.Tokens.Count, session.Cache.Length); // every question was rolled back
    }

    [Fact]
    public void QueryAware_CompressesACopyPerQuestion()
    {
        using var model = LanguageModel.Load(Stories);
        var press = PressRegistry.Parse("streamingllm:keep=0.3");
        using var agnostic = CompressedContext.Create(model, Context, new() { Press = press, MaxTokens = 400 });
        using var aware = CompressedContext.Create(model, Context, new() { Press = press, MaxTokens = 400, QueryAware = true });
        Assert.Equal(aware.BytesBeforeCompression, aware.Cache.ByteCount); // the shared cache itself stays whole
        var a = aware.Ask(Questions[0], Greedy);
        Assert.True(a.CacheBytes < 0.5 * aware.BytesBeforeCompression);
        // StreamingLLM ignores the question, so both modes answer alike.
        Assert.Equal(agnostic.Ask(Questions[0], Greedy).Generation.TokenIds, a.Generation.TokenIds);
    }

    [Fact]
    public void ContextTooLongIsRefused()
    {
        using var model = LanguageModel.Load(Stories);
        var e = Assert.Throws<KvSharpException>(() => CompressedContext.Create(model, Context, new() { MaxTokens = 100 }));
        Assert.Contains("100 positions", e.Message);
    }
}
