using System.Diagnostics;

namespace KvSharp.Tests.Tokenization;

public class PerformanceTests
{
    private static string Text100K()
    {
        var sb = new System.Text.StringBuilder();
        foreach (var f in Directory.GetFiles(RepoPaths.SharedFile("data", "paul_graham_essays")).Order())
        {
            sb.Append(File.ReadAllText(f));
            if (sb.Length >= 100_000) break;
        }
        return sb.ToString(0, 100_000);
    }

    /// <summary>
    /// CPU time of the calling thread where Linux exposes it (robust on an oversubscribed test
    /// machine, where wall time says little), else wall time.
    /// </summary>
    private static TimeSpan ThreadTime(Stopwatch wall)
    {
        const string stat = "/proc/thread-self/stat";
        if (!File.Exists(stat)) return wall.Elapsed;
        string s = File.ReadAllText(stat);
        var fields = s[(s.LastIndexOf(')') + 2)..].Split(' ');
        long ticks = long.Parse(fields[11]) + long.Parse(fields[12]); // utime + stime, in 1/100 s
        return TimeSpan.FromMilliseconds(ticks * 10.0);
    }

    // Debug build, first encode of this text (the word cache is cold).
    [Theory]
    [InlineData("llama3")]
    [InlineData("llama-spm")]
    [InlineData("tinystories")]
    public void Encodes100KbQuickly(string which)
    {
        var tok = which switch
        {
            "llama3" => TestTokenizers.Hf("tokenizers", "llama3"),
            "tinystories" => TestTokenizers.Hf("models", "tinystories-656k"),
            _ => TestTokenizers.Vocab(which),
        };
        string text = Text100K();
        tok.Encode("warm up the code paths 123");
        var sw = Stopwatch.StartNew();
        var before = ThreadTime(sw);
        var ids = tok.Encode(text, addSpecial: false);
        var took = ThreadTime(sw) - before;
        Assert.True(ids.Length > 15_000);
        Assert.True(took.TotalSeconds < 1, $"{which}: 100 KB took {took.TotalMilliseconds:F0} ms");
        if (which != "tinystories") Assert.Equal(text, tok.Decode(ids)); // its vocabulary lacks e.g. '%' and has no byte fallback
    }
}
