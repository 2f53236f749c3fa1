using KvSharp.Evaluation;
using KvSharp.Evaluation.Running;

namespace KvSharp.Tests.Evaluation;

/// <summary>YAML sweep configs: the same values and the same checks as their JSON form, errors naming the line.</summary>
public sealed class SweepConfigYamlTests
{
    private static SweepConfig LoadYaml(string text, string name = "sweep.yaml")
    {
        using var dir = new TempDir();
        string path = dir.File(name);
        File.WriteAllText(path, text);
        return SweepConfig.Load(path);
    }

    private static string Error(string text) => Assert.Throws<KvSharpException>(() => LoadYaml(text)).Message;

    [Fact]
    public void Yaml_GivesTheSameConfigAsJson()
    {
        const string yaml = """
            # a comment
            models: [embedded]
            tasks:
              - needle_eval:niah_single,niah_mixed
              - "lm:tinystories"
            presses: [none, kvzip, "adakv(snapkv)", snapkv+pyramid:window=16]
            keep: [0.1, .25, 5e-1, 1]
            samples: 12
            length: 0x400
            seed: -3
            kv_cache: f32
            question_aware: false
            """;
        var config = LoadYaml(yaml, "sweep.yml");
        Assert.Equal(["embedded"], config.Models);
        Assert.Equal(["needle_eval:niah_single,niah_mixed", "lm:tinystories"], config.Tasks);
        Assert.Equal(["none", "kvzip", "adakv(snapkv)", "snapkv+pyramid:window=16"], config.Presses);
        Assert.Equal([0.1, 0.25, 0.5, 1.0], config.Keep);
        Assert.Equal(12, config.Samples);
        Assert.Equal(1024, config.Length);
        Assert.Equal(-3, config.Seed);
        Assert.False(config.QuestionAware);
    }

    [Fact]
    public void YamlScalars_FollowTheCoreSchema()
    {
        var json = YamlToJson.Convert("a: ~\nb: True\nc: '12'\nd: 0o17\ne: -1.5e3\nf: yes\ng: |\n  text\n", "x.yaml").Json;
        Assert.Equal("""{"a":null,"b":true,"c":"12","d":15,"e":-1500,"f":"yes","g":"text\n"}""", json);
    }

    [Fact]
    public void BadYaml_NamesFileLineAndProblem()
    {
        string syntax = Error("tasks: [lm:tinystories\nkeep: 0.5\n");
        Assert.Contains("sweep.yaml:", syntax, StringComparison.Ordinal);
        Assert.Contains("not valid YAML", syntax, StringComparison.Ordinal);

        string unknown = Error("tasks: [lm:tinystories]\nkepp: [0.5]\n");
        Assert.Contains("kepp", unknown, StringComparison.Ordinal);
        Assert.Contains("line 2", unknown, StringComparison.Ordinal);

        string type = Error("tasks: [lm:tinystories]\nkeep:\n  - 0.5\n  - half\n");
        Assert.Contains("line 4", type, StringComparison.Ordinal);
        Assert.DoesNotContain("BytePositionInLine", type, StringComparison.Ordinal);

        string range = Error("tasks: [lm:tinystories]\nsamples: 2\nkeep: [0, 0.5]\n");
        Assert.Contains("line 3: 'keep' ratios must be in (0, 1]", range, StringComparison.Ordinal);

        Assert.Contains("'tasks' is empty", Error("presses: [none]\n"), StringComparison.Ordinal);
        Assert.Contains("duplicate", Error("tasks: [a]\ntasks: [b]\n"), StringComparison.OrdinalIgnoreCase);
        Assert.Contains("2 YAML documents", Error("tasks: [a]\n---\ntasks: [b]\n"), StringComparison.Ordinal);
        Assert.Contains("not a finite number", Error("tasks: [a]\nkeep: [.inf]\n"), StringComparison.Ordinal);
    }
}
