using System.Text;

namespace KvSharp.Tests.Tokenization;

/// <summary>Reads llama.cpp's test-tokenizer-0 vectors: <c>.inp</c> texts and <c>.out</c> id lines.</summary>
internal static class TokenizerVectors
{
    private const string Separator = "\n__ggml_vocab_test__\n";

    public static string VocabDir => RepoPaths.SharedFile("tokenizers", "llamacpp_vocab");

    /// <summary>(text, expected ids) pairs of <c>ggml-vocab-{name}.gguf.inp/.out</c>.</summary>
    public static List<(string Text, int[] Ids)> Load(string name, string? outFile = null)
    {
        string stem = Path.Combine(VocabDir, $"ggml-vocab-{name}.gguf");
        string raw = File.ReadAllText(stem + ".inp", new UTF8Encoding(false));
        var inputs = new List<string>();
        int pos = 0;
        while (pos < raw.Length)
        {
            int next = raw.IndexOf(Separator, pos, StringComparison.Ordinal);
            if (next < 0) { inputs.Add(raw[pos..]); break; }
            inputs.Add(raw[pos..next]);
            pos = next + Separator.Length;
        }
        var outputs = File.ReadAllLines(outFile ?? stem + ".out");
        Assert.Equal(inputs.Count, outputs.Length);
        return inputs.Zip(outputs, (t, o) => (t, o.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray())).ToList();
    }

    /// <summary>Encodes every vector and returns a description of each mismatch (empty: all pass).</summary>
    public static List<string> Mismatches(KvSharp.Tokenization.ITokenizer tok, IEnumerable<(string Text, int[] Ids)> vectors)
    {
        var bad = new List<string>();
        foreach (var (text, ids) in vectors)
        {
            var got = tok.Encode(text, addSpecial: false, parseSpecial: false);
            if (!got.SequenceEqual(ids))
                bad.Add($"'{Escape(text)}': expected [{string.Join(' ', ids)}] got [{string.Join(' ', got)}]");
        }
        return bad;
    }

    public static string Escape(string s) => s.Replace("\n", "\\n").Replace("\t", "\\t").Replace("\r", "\\r");
}
