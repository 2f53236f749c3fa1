using KvSharp.Cli.Commands;
using KvSharp.Cli.Engine;

namespace KvSharp.Tests.Cli;

/// <summary><c>--save-cache</c>, <c>--load-cache</c> and <c>info --cache</c> over the real engine.</summary>
public class CacheFileCommandLineTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");
    private static readonly string TinyStories = RepoPaths.SharedFile("models", "tinystories-656k");

    private static (int Code, string Out, string Err) Run(params string[] args) => RunWithInput("", args);

    private static (int Code, string Out, string Err) RunWithInput(string input, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var context = new CliContext(new EngineFacade(error), new StringReader(input), output, error, CancellationToken.None);
        int code = KvSharpCommandLine.Run(args, context);
        return (code, output.ToString(), error.ToString());
    }

    private static void AssertOneLineError((int Code, string Out, string Err) r, string mentions)
    {
        Assert.Equal(1, r.Code);
        Assert.StartsWith("kvsharp: ", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.Contains(mentions, r.Err);
    }

    [Fact]
    public void SaveInspectLoad_AndForeignOrDamagedFilesAreRefused()
    {
        using var dir = new TempDir();
        string file = dir.File("story.kvc");
        var saved = Run("generate", "-m", Stories, "-p", "Once upon a time", "--temperature", "0", "--max-tokens", "40", "--kv-cache", "int8:int4", "--save-cache", file);
        Assert.Equal(0, saved.Code);
        Assert.Contains("saved", saved.Err);

        // stories260K: 5 layers x 4 KV heads; the prompt and 39 generated tokens (the last one never ran) in the file.
        var info = Run("info", "--cache", file);
        Assert.Equal(0, info.Code);
        Assert.Contains("5 layers x 4 KV heads", info.Out);
        Assert.Contains("layer 4, KV head 3", info.Out);
        Assert.Contains("in Int8", info.Out);
        Assert.Contains("in Int4", info.Out);

        var loaded = Run("generate", "-m", Stories, "--load-cache", file, "-p", " The end.", "--temperature", "0", "--max-tokens", "10", "--show-cache");
        Assert.Equal(0, loaded.Code);
        Assert.Contains("loaded", loaded.Err);
        Assert.True(loaded.Out.Trim().Length > 0);

        AssertOneLineError(Run("generate", "-m", TinyStories, "--load-cache", file, "-p", "x", "--max-tokens", "1"), "saved for model llama 5 layers");
        var bytes = File.ReadAllBytes(file);
        bytes[bytes.Length / 2] ^= 0x40;
        File.WriteAllBytes(file, bytes);
        AssertOneLineError(Run("info", "--cache", file), "corrupt");
        Assert.Equal(2, Run("generate", "-m", Stories, "--load-cache", dir.File("none.kvc"), "-p", "x").Code);
    }

    /// <summary>
    /// A chat after a loaded context: the conversation follows the loaded tokens (they survive /reset) and the cache
    /// is saved after each answer, growing by the turns.
    /// </summary>
    [Fact]
    public void ChatAfterALoadedContext_SavesAfterEachAnswer()
    {
        using var dir = new TempDir();
        string context = dir.File("context.kvc"), after = dir.File("after.kvc");
        Assert.Equal(0, Run("generate", "-m", Stories, "-p", "Lily had a red ball.", "--temperature", "0", "--max-tokens", "1", "--save-cache", context).Code);
        var contextInfo = Run("info", "--cache", context);
        var chat = RunWithInput("Where is the ball?\n/reset\nWho is Lily?\n/exit\n",
            "chat", "-m", Stories, "--template", "plain", "--load-cache", context, "--save-cache", after, "--temperature", "0", "--max-tokens", "8");
        Assert.Equal(0, chat.Code);
        Assert.Contains("loaded", chat.Err);
        Assert.Equal(2, chat.Err.Split("saved").Length - 1);
        using (var saved = KvSharp.Cache.Paged.PagedKvCache.Load(after, KvSharp.Cache.Paged.PagedKvCache.SavedFingerprint(after)))
        using (var loaded = KvSharp.Cache.Paged.PagedKvCache.Load(context, KvSharp.Cache.Paged.PagedKvCache.SavedFingerprint(context)))
        {
            Assert.True(saved.Length > loaded.Length);
            var prefix = loaded.Read(4, 3).Keys; // f32 blocks: the context's keys come back exactly as the prefix
            Assert.Equal(prefix, saved.Read(4, 3).Keys.Take(prefix.Length));
        }
        Assert.Contains("5 layers x 4 KV heads", contextInfo.Out);
    }
}
