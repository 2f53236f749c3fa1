using KvSharp.Cli.Commands;
using KvSharp.Cli.Engine;

namespace KvSharp.Tests.Cli;

/// <summary>The real command line over the real engine: outputs on good input, one clear line on bad input.</summary>
public class EngineCommandLineTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");
    private static readonly string Needle = RepoPaths.SharedFile("models", "kvsharp-needle-16m");

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var context = new CliContext(new EngineFacade(error), new StringReader(""), output, error, CancellationToken.None);
        int code = KvSharpCommandLine.Run(args, context);
        return (code, output.ToString(), error.ToString());
    }

    /// <summary>Exit code 1, a message naming <paramref name="mentions"/>, and no stack trace.</summary>
    private static void AssertInputError((int Code, string Out, string Err) r, params string[] mentions)
    {
        Assert.Equal(1, r.Code);
        Assert.StartsWith("kvsharp: ", r.Err);
        Assert.DoesNotContain("   at ", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        foreach (var m in mentions) Assert.Contains(m, r.Err);
    }

    [Fact]
    public void GenerateGreedyReproducesLlamaCppText()
    {
        var reference = Reference.ReferenceOutput.Load(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json"))[1];
        var r = Run("generate", "-m", Stories, "-p", reference.Prompt, "--temperature", "0", "--max-tokens", "30");
        Assert.Equal(0, r.Code);
        // The reference greedy_text's first 30 tokens: compare the first line, which 30 tokens cover.
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json")));
        string expected = json.RootElement.GetProperty("results")[1].GetProperty("greedy_text").GetString()!;
        Assert.StartsWith(r.Out.TrimEnd('\n'), expected);
        Assert.True(r.Out.Length > 60);
    }

    [Fact]
    public void InfoReportsArchitectureAndKvBytesPerToken()
    {
        var r = Run("info", Needle);
        Assert.Equal(0, r.Code);
        // 2 (K and V) x 8 layers x 2 KV heads x 64 dims x 2 bytes (F16) = 4096
        Assert.Contains("4,096 (F16)", r.Out);
        Assert.Contains("15,735,168", r.Out);
    }

    [Theory]
    [InlineData(100)]
    [InlineData(5000)]
    [InlineData(200_000)]
    public void TruncatedGgufIsRefusedWithOneLine(int keepBytes)
    {
        using var dir = new TempDir();
        string path = dir.File("cut.gguf");
        File.WriteAllBytes(path, File.ReadAllBytes(Stories)[..keepBytes]);
        AssertInputError(Run("generate", "-m", path, "-p", "x"), "cut.gguf");
    }

    [Fact]
    public void CorruptMagicIsRefused()
    {
        using var dir = new TempDir();
        string path = dir.File("bad.gguf");
        var bytes = File.ReadAllBytes(Stories);
        bytes[0] = (byte)'X';
        File.WriteAllBytes(path, bytes);
        AssertInputError(Run("info", path), "bad.gguf", "magic");
    }

    [Fact]
    public void MissingTokenizerIsRefused()
    {
        using var dir = new TempDir();
        foreach (var f in Directory.GetFiles(Needle).Where(f => !f.EndsWith("tokenizer.json", StringComparison.Ordinal)))
            File.Copy(f, dir.File(Path.GetFileName(f)));
        AssertInputError(Run("generate", "-m", dir.Path, "-p", "x"), "tokenizer");
    }

    [Fact]
    public void UnknownArchitectureIsRefused()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), File.ReadAllText(Path.Combine(Needle, "config.json")).Replace("\"llama\"", "\"gpt_bigcode\""));
        AssertInputError(Run("info", dir.Path), "gpt_bigcode");
    }

    [Fact]
    public void PromptLongerThanTheContextIsRefused()
    {
        string prompt = string.Concat(Enumerable.Repeat("Once upon a time ", 300));
        AssertInputError(Run("generate", "-m", Stories, "-p", prompt), "prompt", "context");
        AssertInputError(Run("generate", "-m", Stories, "-p", "Once upon a time", "--ctx", "1000"), "--ctx", "512");
    }

    [Fact]
    public void ContradictoryOptionsAreUsageErrors()
    {
        using var dir = new TempDir();
        File.Copy(Path.Combine(Needle, "config.json"), dir.File("config.json"));
        var r = Run("generate", "-m", Stories, "--dummy", dir.File("config.json"), "-p", "x");
        Assert.Equal(2, r.Code);
        Assert.Contains("--dummy", r.Err);
        Assert.DoesNotContain("   at ", r.Err);
    }

    [Fact]
    public void DemoRetrievesEveryHiddenFactWithTheEmbeddedModel()
    {
        var r = Run("demo", "--sentences", "120", "--facts", "3", "--seed", "5");
        Assert.Equal(0, r.Code);
        string plain = System.Text.RegularExpressions.Regex.Replace(r.Out, @"\x1b\[[0-9;]*m", ""); // drop colors
        Assert.Contains("correct: 3/3 (compressed cache), 3/3 (full cache)", plain);
        Assert.Contains("kvzip:chunk=2000+global:keep=0.3", plain);
        Assert.Contains("smaller", plain);
    }

    [Fact]
    public void CompressedCacheDemoReportsPackedBytesAndStillRetrieves()
    {
        var r = Run("demo", "--sentences", "120", "--facts", "3", "--seed", "5", "--kv-cache", "int4:int2", "--press", "none");
        Assert.Equal(0, r.Code);
        string plain = System.Text.RegularExpressions.Regex.Replace(r.Out, @"\x1b\[[0-9;]*m", "");
        Assert.Contains("correct: 3/3", plain);
        Assert.Contains("in Int2 blocks", plain);
        Assert.Contains("compression", plain);
    }

    [Fact]
    public void F16CacheGenerationReproducesLlamaCppGreedyText()
    {
        // llama.cpp produced the reference with its default F16 KV cache.
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json")));
        var first = json.RootElement.GetProperty("results")[1];
        var r = Run("generate", "-m", Stories, "-p", first.GetProperty("prompt").GetString()!, "--temperature", "0", "-n", "40", "--kv-cache", "f16", "--show-cache");
        Assert.Equal(0, r.Code);
        Assert.StartsWith(r.Out.TrimEnd('\n'), first.GetProperty("greedy_text").GetString()!);
        Assert.Contains("F16 blocks", r.Err);
    }

    /// <summary>
    /// --numerics llamacpp: the first 40 greedy tokens of llama.cpp's text; info names
    /// the mode; a value other than fast or llamacpp is a one-line usage error.
    /// </summary>
    [Fact]
    public void LlamaCppNumericsGenerationReproducesLlamaCppGreedyText()
    {
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(RepoPaths.SharedFile("reference", "stories260k.llamacpp.json")));
        var second = json.RootElement.GetProperty("results")[1];
        var r = Run("generate", "-m", Stories, "-p", second.GetProperty("prompt").GetString()!, "--temperature", "0", "-n", "40", "--numerics", "llamacpp");
        Assert.Equal(0, r.Code);
        Assert.StartsWith(r.Out.TrimEnd('\n'), second.GetProperty("greedy_text").GetString()!);

        var info = Run("info", "-m", Stories, "--numerics", "llamacpp");
        Assert.Equal(0, info.Code);
        Assert.Contains("llamacpp", info.Out);

        var bad = Run("generate", "-m", Stories, "-p", "x", "--numerics", "fp64");
        Assert.Equal(2, bad.Code);
        Assert.Contains("--numerics must be fast or llamacpp; got 'fp64'", bad.Err);
        Assert.DoesNotContain("   at ", bad.Err);
    }

    [Theory]
    [InlineData("int3")]
    [InlineData("int4:int2:f16")]
    [InlineData("int2+128")]
    public void BadKvCacheSpecIsAUsageError(string spec)
    {
        var r = Run("generate", "-m", Stories, "-p", "x", "--kv-cache", spec);
        Assert.Equal(2, r.Code);
        Assert.Contains("--kv-cache", r.Err);
        Assert.DoesNotContain("   at ", r.Err);
    }

    [Fact]
    public void Ask_AnswersEveryQuestionAndReportsTheSmallerCache()
    {
        using var dir = new TempDir();
        string context = dir.File("story.txt");
        File.WriteAllText(context, string.Concat(Enumerable.Repeat("Lily and her dog Max played with a big red ball in the park. ", 6)));
        var r = Run("ask", "-m", Stories, "--context", context, "--press", "streamingllm:keep=0.25", "--compare",
            "-q", " Lily said", "-q", " Max", "-n", "8");
        Assert.Equal(0, r.Code);
        Assert.Contains("Lily said", r.Out);
        Assert.Contains("full-cache answer", r.Out);
        Assert.Contains("KV bytes after", r.Out);
        Assert.Contains("streamingllm:sinks=4+uniform:keep=0.25", r.Out);
    }

    [Fact]
    public void Ask_WithClusterKv_ReportsEveryByteKeptAndTheTokensReadPerStep()
    {
        using var dir = new TempDir();
        string context = dir.File("story.txt");
        File.WriteAllText(context, string.Concat(Enumerable.Repeat("Lily and her dog Max played with a big red ball in the park. ", 6)));
        var r = Run("ask", "-m", Stories, "--context", context, "--press", "streamingllm:keep=0.5+clusterkv:keep=0.25,clusters=8,iters=3", "--compare",
            "-q", " Lily said", "-n", "6");
        Assert.Equal(0, r.Code);
        string text = System.Text.RegularExpressions.Regex.Replace(r.Out, @"[\s│]+", " "); // the table wraps long cells
        Assert.Contains("clusterkv:keep=0.25", text);
        Assert.Contains("clusterkv recall", text);
        Assert.Contains("tokens read per decode step and (layer, KV head)", text);
        Assert.Contains("every byte kept, plus a float32 copy", text);

        var bad = Run("ask", "-m", Stories, "--context", context, "--press", "clusterkv:budget=64", "-q", "x");
        Assert.Equal(KvSharpCommandLine.UsageError, bad.Code);
        Assert.Contains("--press", bad.Err);
        Assert.Contains("unknown parameter 'budget'", bad.Err);
        Assert.DoesNotContain("   at ", bad.Err);

        var decode = Run("ask", "-m", Stories, "--context", context, "--press", "clusterkv", "--decode-press", "h2o:tokens=64", "-q", "x");
        Assert.Equal(KvSharpCommandLine.UsageError, decode.Code);
        Assert.Contains("--decode-press", decode.Err);
    }

    [Fact]
    public void Demo_WithClusterKv_RetrievesAndReportsRecall()
    {
        var r = Run("demo", "--sentences", "120", "--facts", "2", "--seed", "5", "--press", "clusterkv:keep=0.3,clusters=32,iters=5");
        Assert.Equal(0, r.Code);
        string plain = System.Text.RegularExpressions.Regex.Replace(r.Out, @"\x1b\[[0-9;]*m", ""); // drop colors
        Assert.Contains("correct: 2/2 (compressed cache)", plain);
        Assert.Contains("ClusterKV recall:", plain);
        Assert.Contains("1.00x smaller", plain); // recall evicts nothing
    }
}
