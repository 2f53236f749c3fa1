using KvSharp.Cli.Commands;
using KvSharp.Generation;
using KvSharp.Generation.Chat;
using KvSharp.Generation.Sampling;

namespace KvSharp.Tests.Cli;

public class CommandLineTests
{
    private static readonly string Gguf = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    private sealed class FakeEngine : IEngineFacade
    {
        public GenerateRequest? Generated;
        public ChatRequest? Chatted;
        public ModelSource? Described;
        public Exception? Throw;
        public readonly List<ChatMessage[]> Conversations = [];

        public void Info(ModelSource model, TextWriter output) { if (Throw != null) throw Throw; Described = model; }
        public void CacheInfo(string path, TextWriter output) => output.WriteLine($"cache {path}");

        public int Generate(GenerateRequest request, TextWriter output, CancellationToken cancellation)
        {
            if (Throw != null) throw Throw;
            Generated = request;
            output.Write("generated");
            return 0;
        }

        public IChatSession OpenChat(ChatRequest request, CancellationToken cancellation) { Chatted = request; return new Session(this); }

        public AskRequest? Asked;

        public int Ask(AskRequest request, TextWriter output, CancellationToken cancellation) { if (Throw != null) throw Throw; Asked = request; return 0; }

        private sealed class Session(FakeEngine engine) : IChatSession
        {
            public IChatTemplate Template { get; } = new ChatMlTemplate();
            public string Respond(IReadOnlyList<ChatMessage> conversation, Action<string> onText, CancellationToken cancellation)
            {
                engine.Conversations.Add([.. conversation]);
                onText("re:");
                onText(conversation[^1].Content);
                return "re:" + conversation[^1].Content;
            }
            public void Dispose() { }
        }
    }

    private static (int Code, string Out, string Err) Run(FakeEngine engine, string input, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = KvSharpCommandLine.Run(args, new CliContext(engine, new StringReader(input), output, error, CancellationToken.None));
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void Generate_BindsEveryOption()
    {
        var engine = new FakeEngine();
        var (code, output, _) = Run(engine, "", "generate", "--model", Gguf, "--prompt", "Once upon", "--max-tokens", "12",
            "--temperature", "0.5", "--top-k", "7", "--top-p", "0.8", "--min-p", "0.1", "--repeat-penalty", "1.3",
            "--repeat-last-n", "32", "--seed", "99", "--stop", "END", "--stop", "\n\n", "--threads", "2", "--ctx", "256",
            "--template", "llama3", "--show-cache", "--ignore-eos");
        Assert.Equal(0, code);
        Assert.Equal("generated", output);
        var r = engine.Generated!;
        Assert.Equal(new ModelSource(Gguf, null, "f16", 2, 256), r.Model);
        Assert.Equal("Once upon", r.Prompt);
        Assert.IsType<Llama3ChatTemplate>(r.Template);
        Assert.True(r.ShowCache);
        var o = r.Options;
        Assert.Equal(12, o.MaxTokens);
        Assert.Equal(new SamplerOptions { Temperature = 0.5f, TopK = 7, TopP = 0.8f, MinP = 0.1f, RepetitionPenalty = 1.3f, RepeatLastN = 32 }, o.Sampler);
        Assert.Equal(99UL, o.EffectiveSampler.Seed);
        Assert.Equal(["END", "\n\n"], o.StopStrings);
        Assert.False(o.StopAtEos);
    }

    [Fact]
    public void Generate_DefaultsMatchLibraryDefaults()
    {
        var engine = new FakeEngine();
        var config = Path.GetTempFileName();
        try
        {
            Assert.Equal(0, Run(engine, "", "generate", "--dummy", config, "--dummy-type", "Q8_0", "-p", "x").Code);
        }
        finally { File.Delete(config); }
        var r = engine.Generated!;
        Assert.Equal(new ModelSource(null, config, "q8_0", null, null), r.Model);
        Assert.Null(r.Template);
        Assert.Null(r.TemplateName);
        var defaults = new GenerationOptions();
        Assert.Equal(defaults.Sampler, r.Options.Sampler);
        Assert.Equal(defaults.MaxTokens, r.Options.MaxTokens);
        Assert.Null(r.Options.Seed);
        Assert.Empty(r.Options.StopStrings);
        Assert.True(r.Options.StopAtEos);
    }

    [Theory]
    [InlineData("--bogus", "--bogus")]
    [InlineData("--top-k abc", "--top-k: 'abc' is not a whole number")]
    [InlineData("--top-p 0", "--top-p must be in (0, 1]")]
    [InlineData("--temperature -1", "--temperature must be")]
    [InlineData("--repeat-penalty 0", "--repeat-penalty must be")]
    [InlineData("--max-tokens -5", "--max-tokens must be >= 0")]
    [InlineData("--seed -1", "--seed: '-1'")]
    [InlineData("--template vicuna", "--template: unknown chat template 'vicuna'")]
    [InlineData("--dummy-type q2_k", "--dummy-type")]
    [InlineData("--dummy x.json", "--model and --dummy cannot be used together")]
    [InlineData("--threads 0", "--threads must be > 0")]
    [InlineData("--numerics fp64", "--numerics must be fast or llamacpp")]
    public void Generate_BadOptions_OneMessageExitCode2(string extra, string expected)
    {
        var engine = new FakeEngine();
        var (code, output, error) = Run(engine, "", ["generate", "--model", Gguf, "-p", "x", .. extra.Split(' ')]);
        Assert.Equal(KvSharpCommandLine.UsageError, code);
        Assert.Null(engine.Generated);
        Assert.Equal("", output);
        var lines = error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("kvsharp: ", lines[0]);
        Assert.Contains(expected, lines[0]);
        Assert.DoesNotContain(" at ", error); // no stack trace
        Assert.True(lines.Length <= 2, error);
    }

    [Fact]
    public void MissingModelOrPrompt_IsUsageError()
    {
        Assert.Equal(2, Run(new FakeEngine(), "", "generate", "-p", "x").Code);
        Assert.Equal(2, Run(new FakeEngine(), "", "generate", "--model", Gguf).Code);
        Assert.Equal(2, Run(new FakeEngine(), "", "generate", "--model", "/no/such/model.gguf", "-p", "x").Code);
        Assert.Equal(2, Run(new FakeEngine(), "").Code);
    }

    [Fact]
    public void EngineInputError_ExitCode1WithMessage()
    {
        var engine = new FakeEngine { Throw = new ModelFormatException("m.gguf", "truncated tensor data") };
        var (code, _, error) = Run(engine, "", "info", "--model", Gguf);
        Assert.Equal(KvSharpCommandLine.InputError, code);
        Assert.Equal("kvsharp: m.gguf: truncated tensor data", error.Trim());
    }

    [Fact]
    public void Info_BindsModel()
    {
        var engine = new FakeEngine();
        Assert.Equal(0, Run(engine, "", "info", "-m", Gguf, "-c", "128").Code);
        Assert.Equal(new ModelSource(Gguf, null, "f16", null, 128), engine.Described);
    }

    [Fact]
    public void Chat_LoopKeepsHistoryResetsAndExits()
    {
        var engine = new FakeEngine();
        var (code, output, _) = Run(engine, "hello\n\n/reset\nagain\n/exit\nnever\n",
            "chat", "--model", Gguf, "--system", "Be brief.", "--temp", "0");
        Assert.Equal(0, code);
        Assert.Null(engine.Chatted!.Template); // "auto": the engine detects it from the model
        Assert.Equal("Be brief.", engine.Chatted.SystemPrompt);
        Assert.Equal(2, engine.Conversations.Count);
        Assert.Equal([ChatMessage.System("Be brief."), ChatMessage.User("hello")], engine.Conversations[0]);
        Assert.Equal([ChatMessage.System("Be brief."), ChatMessage.User("again")], engine.Conversations[1]);
        Assert.Equal("re:hello" + Environment.NewLine + "re:again" + Environment.NewLine, output);
    }

    [Fact]
    public void Chat_HistoryIncludesEarlierAnswers()
    {
        var engine = new FakeEngine();
        Assert.Equal(0, Run(engine, "a\nb\n", "chat", "--model", Gguf, "--template", "llama2").Code);
        Assert.IsType<Llama2ChatTemplate>(engine.Chatted!.Template);
        Assert.Equal([ChatMessage.User("a"), ChatMessage.Assistant("re:a"), ChatMessage.User("b")], engine.Conversations[1]);
    }

    [Fact]
    public void Escapes_ProcessedInTextOptionsUnlessNoEscape()
    {
        var engine = new FakeEngine();
        Assert.Equal(0, Run(engine, "", "generate", "--model", Gguf, "-p", @"a\tb\\c \x41 \q", "--stop", @"\n\n").Code);
        Assert.Equal("a\tb\\c A \\q", engine.Generated!.Prompt);
        Assert.Equal(["\n\n"], engine.Generated.Options.StopStrings);

        Assert.Equal(0, Run(engine, "", "generate", "--model", Gguf, "-p", @"a\tb", "--stop", @"\n", "--no-escape").Code);
        Assert.Equal(@"a\tb", engine.Generated!.Prompt);
        Assert.Equal([@"\n"], engine.Generated.Options.StopStrings);
    }

    [Fact]
    public void Ask_BindsQuestionsPressAndGreedyDefaults()
    {
        var engine = new FakeEngine();
        var (code, _, _) = Run(engine, "", "ask", "--model", Gguf, "--context", Gguf, "--press", "adakv(keynorm):keep=0.25",
            "-q", "first", "--question", @"second
", "--query-aware", "--kv-cache", "int4");
        Assert.Equal(0, code);
        var r = engine.Asked!;
        Assert.Equal(["first", "second\n"], r.Questions);
        Assert.Equal("keynorm+adakv:keep=0.25,floor=0.2", r.Press!.Text);
        Assert.True(r.QueryAware);
        Assert.False(r.CompareFull);
        Assert.Equal(0, r.Options.Sampler.Temperature);
        Assert.Equal(64, r.Options.MaxTokens);
        Assert.Equal("Int4", r.Model.KvCache!.ToString());

        Assert.Equal(0, Run(engine, "", "ask", "--model", Gguf, "--context", Gguf, "-q", "x", "--temperature", "0.5", "-n", "9").Code);
        Assert.Null(engine.Asked!.Press);
        Assert.Equal(0.5f, engine.Asked.Options.Sampler.Temperature);
        Assert.Equal(9, engine.Asked.Options.MaxTokens);
    }

    [Fact]
    public void Ask_BadPressOrMissingInput_IsUsageErrorNamingIt()
    {
        var (code, _, err) = Run(new FakeEngine(), "", "ask", "--model", Gguf, "--context", Gguf, "-q", "x", "--press", "snapkvv:keep=0.2");
        Assert.Equal(KvSharpCommandLine.UsageError, code);
        Assert.Contains("--press", err);
        Assert.Contains("unknown method 'snapkvv'", err);
        Assert.Contains("streamingllm", err);
        Assert.Equal(2, Run(new FakeEngine(), "", "ask", "--model", Gguf, "--context", "/no/such/file.txt", "-q", "x").Code);
        Assert.Equal(2, Run(new FakeEngine(), "", "ask", "--model", Gguf, "--context", Gguf).Code);
    }
}
