using System.Text.RegularExpressions;
using KvSharp.Evaluation.Tasks;
using KvSharp.Evaluation.Tasks.Ruler;
using KvSharp.Tokenization;

namespace KvSharp.Tests.Evaluation;

/// <summary>
/// The RULER generators produce records in the format of ../shared/data/ruler (fields, prompt structure, needle
/// sentences), of the requested token length, deterministic in the seed, with outputs that an independent reading of
/// the generated text confirms.
/// </summary>
public sealed class RulerGeneratorTests
{
    private static readonly Lazy<ITokenizer> NeedleTokenizer = new(() => TokenizerLoader.FromDirectory(RepoPaths.SharedFile("models", "kvsharp-needle-16m")));
    private static readonly Lazy<Haystack> Essays = new(() => Haystack.Essays(RepoPaths.SharedFile("data", "paul_graham_essays")));

    private static IReadOnlyList<RulerRecord> Generate(string task, int length, int count, int seed = 7) =>
        new RulerGenerator(NeedleTokenizer.Value).Generate(RulerGenerator.Create(task, Essays.Value, length), length, count, seed);

    // The prompt structure of niah_multikey_3: intro, uuid needle lines, the question about one key, the answer prefix.
    private static readonly Regex MultiKey3 = new(
        @"^A special magic uuid is hidden within the following text\. Make sure to memorize it\. I will quiz you about the uuid afterwards\.\n" +
        @"(One of the special magic uuids for [0-9a-f-]{36} is: [0-9a-f-]{36}\.\n)+" +
        @"What is the special magic uuid for ([0-9a-f-]{36}) mentioned in the provided text\? The special magic uuid for \2 mentioned in the provided text is$",
        RegexOptions.CultureInvariant);

    [Fact]
    public void NiahMultikey3_HasTheStructureOfTheSharedRulerSamples()
    {
        string sharedLine = File.ReadLines(RepoPaths.SharedFile("data", "ruler", "niah_multikey_3_4096.jsonl")).First();
        var shared = RulerRecord.Parse(sharedLine, 0);
        var sharedFields = System.Text.Json.Nodes.JsonNode.Parse(sharedLine)!.AsObject().Select(p => p.Key).Order().ToArray();
        Assert.Matches(MultiKey3, shared.Input); // the pattern describes the reference ...

        var ours = Generate("niah_multikey_3", 1024, 2);
        foreach (var record in ours)
        {
            Assert.Matches(MultiKey3, record.Input); // ... and our records
            var fields = System.Text.Json.Nodes.JsonNode.Parse(record.ToJson())!.AsObject().Select(p => p.Key).Order().ToArray();
            Assert.Equal(sharedFields, fields);
            var answer = Assert.Single(record.Outputs);
            string key = MultiKey3.Match(record.Input).Groups[2].Value;
            Assert.Contains($"One of the special magic uuids for {key} is: {answer}.", record.Input, StringComparison.Ordinal);
        }
        Assert.Equal([0, 1], ours.Select(r => r.Index));
    }

    [Theory]
    [InlineData("niah_single", 1024)]
    [InlineData("niah_multivalue", 1536)]
    [InlineData("niah_multiquery", 1024)]
    [InlineData("niah_single_1", 700)]
    public void Niah_FitsTheLengthAndHidesEveryAnswer(string task, int length)
    {
        var records = Generate(task, length, 2);
        var niah = (NiahTask)RulerGenerator.Create(task, Essays.Value, length);
        foreach (var r in records)
        {
            int tokens = NeedleTokenizer.Value.Encode(r.Input, addSpecial: true).Length + 128;
            Assert.Equal(tokens, r.Length);
            Assert.InRange(tokens, length * 0.85, length); // as long as fits: a haystack unit more would not
            Assert.Equal(niah.Queries * niah.Values, r.Outputs.Count);
            foreach (var value in r.Outputs)
                Assert.Matches(new Regex($@"One of the special magic numbers? for [a-z0-9-]+ is: {value}\."), r.Input);
            Assert.EndsWith(niah.Queries * niah.Values == 1 ? "mentioned in the provided text is" : "mentioned in the provided text are", r.Input, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Generation_IsDeterministicInTheSeed()
    {
        var a = Generate("niah_multikey_1", 512, 2, seed: 3);
        var b = Generate("niah_multikey_1", 512, 2, seed: 3);
        var c = Generate("niah_multikey_1", 512, 2, seed: 4);
        Assert.Equal(a.Select(r => r.ToJson()), b.Select(r => r.ToJson()));
        Assert.NotEqual(a[0].Input, c[0].Input);
        Assert.NotEqual(a[0].Input, a[1].Input);
    }

    [Fact]
    public void VariableTracking_OutputsAreTheChainOfTheQueriedValue()
    {
        foreach (var r in Generate("vt", 600, 2))
        {
            // Follow the assignments in the text from the queried value (an independent reading of the prompt).
            string value = Regex.Match(r.Input, @"assigned the value (\d+) in the text above").Groups[1].Value;
            var assignments = Regex.Matches(r.Input, @"VAR ([A-Z]{5}) = (VAR ([A-Z]{5})|\d+)").Select(m => (Var: m.Groups[1].Value, From: m.Groups[3].Success ? m.Groups[3].Value : m.Groups[2].Value)).ToList();
            var chain = new HashSet<string>(assignments.Where(a => a.From == value).Select(a => a.Var));
            for (bool grew = true; grew;)
            {
                grew = false;
                foreach (var a in assignments)
                    if (chain.Contains(a.From) && chain.Add(a.Var)) grew = true;
            }
            Assert.Equal(chain.Order(), r.Outputs.Order());
            Assert.Equal(5, r.Outputs.Count);
            Assert.StartsWith("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n", r.Input, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void CommonWords_OutputsAreTheTenMostFrequentListedWords()
    {
        var r = Assert.Single(Generate("cwe", 1024, 1));
        var counts = Regex.Matches(r.Input, @"\d+\. ([a-z]+)").GroupBy(m => m.Groups[1].Value).ToDictionary(g => g.Key, g => g.Count());
        var top = counts.OrderByDescending(p => p.Value).Take(10).Select(p => p.Key);
        Assert.Equal(top.Order(), r.Outputs.Order());
        Assert.All(r.Outputs, w => Assert.Equal(6, counts[w])); // RULER's repeats below 4K tokens
    }

    [Fact]
    public void FrequentWords_OutputsAreTheThreeMostFrequentCodedWords()
    {
        var r = Assert.Single(Generate("fwe", 1024, 1));
        string text = r.Input[..r.Input.IndexOf("\nQuestion:", StringComparison.Ordinal)];
        var counts = text.Split(' ').Where(w => Regex.IsMatch(w, "^[a-z]{6}$")).GroupBy(w => w).ToDictionary(g => g.Key, g => g.Count());
        var top = counts.OrderByDescending(p => p.Value).Take(3).Select(p => p.Key).ToList();
        Assert.Equal(top, r.Outputs);
        Assert.Contains(" ... ", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Zeta_MatchesKnownValues()
    {
        Assert.Equal(Math.PI * Math.PI / 6, FrequentWordsTask.Zeta(2), 10);
        Assert.Equal(1.2020569031595942, FrequentWordsTask.Zeta(3), 10); // Apéry's constant
    }

    [Fact]
    public void UnknownTask_IsAnErrorNamingIt()
    {
        var e = Assert.Throws<KvSharpException>(() => RulerGenerator.Create("niah_bogus", null, 1024));
        Assert.Contains("niah_bogus", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void PromptSplitter_SplitsAtTheQuestion()
    {
        var (context, question) = PromptSplitter.Split("intro\nhay One of them. hay\nWhat is the special magic number for 12 mentioned? The special magic number for 12 mentioned in the provided text is");
        Assert.Equal("intro\nhay One of them. hay\n", context);
        Assert.StartsWith("What is the special magic number for 12", question, StringComparison.Ordinal);
        Assert.Equal(("no question here", ""), PromptSplitter.Split("no question here"));
    }
}
