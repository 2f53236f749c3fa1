using System.Text.Json;

namespace KvSharp.Evaluation.Running;

/// <summary>
/// A sweep: every model × task × press × keep ratio is one cell. Read from JSON or YAML (<c>.yaml</c>/<c>.yml</c>;
/// snake_case keys), e.g. <c>{"models": ["embedded"], "tasks": ["needle_eval:niah_single"], "presses": ["none", "kvzip"],
/// "keep": [0.1, 0.25, 0.5], "samples": 20, "length": 2048, "seed": 42, "kv_cache": "f32"}</c>; a YAML file is
/// converted to that JSON and checked the same way.
/// </summary>
public sealed record SweepConfig
{
    /// <summary>Model paths (GGUF file or Hugging Face folder); <c>embedded</c> is the command's default model.</summary>
    public IReadOnlyList<string> Models { get; init; } = ["embedded"];

    /// <summary>Task specs (see <see cref="Tasks.TaskCatalog"/>).</summary>
    public IReadOnlyList<string> Tasks { get; init; } = [];

    /// <summary>Press names; <c>none</c> is the full cache.</summary>
    public IReadOnlyList<string> Presses { get; init; } = ["none"];

    /// <summary>Keep ratios in (0, 1].</summary>
    public IReadOnlyList<double> Keep { get; init; } = [1.0];

    /// <summary>Samples per task (per sub-task for needle_eval).</summary>
    public int Samples { get; init; } = 20;

    /// <summary>Token length of generated tasks (context, question and answer budget).</summary>
    public int Length { get; init; } = 2048;

    /// <summary>Seed of generated tasks.</summary>
    public int Seed { get; init; } = 42;

    /// <summary>KV cache block formats (<see cref="Cache.KvCacheSpec"/> text); default F32 (exact).</summary>
    public string KvCache { get; init; } = "f32";

    /// <summary>Whether a single question is shown to the press (query-aware compression).</summary>
    public bool QuestionAware { get; init; } = true;

    /// <summary>
    /// Reads and checks a config file, YAML when its extension is <c>.yaml</c> or <c>.yml</c>, else JSON; errors name
    /// the file and the problem (for YAML, its line).
    /// </summary>
    public static SweepConfig Load(string path)
    {
        if (!File.Exists(path)) throw new KvSharpException($"{path}: sweep config not found");
        string text = File.ReadAllText(path);
        bool yaml = Path.GetExtension(path).ToLowerInvariant() is ".yaml" or ".yml";
        var converted = yaml ? YamlToJson.Convert(text, path) : null;
        SweepConfig? config;
        try
        {
            var options = new JsonSerializerOptions(JsonlFile.Options) { UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Disallow, ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };
            config = JsonSerializer.Deserialize<SweepConfig>(converted?.Json ?? text, options);
        }
        catch (JsonException e)
        {
            throw new KvSharpException($"{path}: not a sweep config ({converted?.Describe(e) ?? e.Message})", e);
        }
        if (config == null) throw new KvSharpException($"{path}: empty sweep config");
        try { config.Validate(); }
        catch (KvSharpException e)
        {
            // Validate's messages start with the key they are about ('keep' ...): a YAML file gets that key's line.
            int quote = e.Message.StartsWith('\'') ? e.Message.IndexOf('\'', 1) : -1;
            string line = quote > 1 && converted?.LineOf("$." + e.Message[1..quote]) is { } n ? $"line {n}: " : "";
            throw new KvSharpException($"{path}: {line}{e.Message}", e);
        }
        return config;
    }

    /// <summary>Checks the values; a bad one is a <see cref="KvSharpException"/> naming the key.</summary>
    public void Validate()
    {
        if (Models.Count == 0) throw new KvSharpException("'models' is empty");
        if (Tasks.Count == 0) throw new KvSharpException("'tasks' is empty: name at least one task");
        if (Presses.Count == 0) throw new KvSharpException("'presses' is empty (use \"none\" for the full cache)");
        if (Keep.Count == 0) throw new KvSharpException("'keep' is empty");
        foreach (var k in Keep)
            if (!(k > 0 && k <= 1)) throw new KvSharpException($"'keep' ratios must be in (0, 1], got {k}");
        if (Samples < 1) throw new KvSharpException($"'samples' must be ≥ 1, got {Samples}");
        if (Length < 64) throw new KvSharpException($"'length' must be ≥ 64 tokens, got {Length}");
        Cache.KvCacheSpec.Parse(KvCache);
    }
}
