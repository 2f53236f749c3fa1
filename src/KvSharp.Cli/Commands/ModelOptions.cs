using System.CommandLine;

namespace KvSharp.Cli.Commands;

/// <summary>The options that pick and size a model, shared by every command (a fresh set per command).</summary>
internal sealed class ModelOptions
{
    /// <summary>Weight types the dummy-weights mode can generate.</summary>
    public static readonly string[] DummyTypes = ["f16", "bf16", "f32", "q8_0", "q4_0"];

    public Option<string?> Model { get; } = new Option<string?>("--model", "-m") { Description = "GGUF file or Hugging Face model folder", HelpName = "PATH" };
    public Option<string?> Dummy { get; } = new Option<string?>("--dummy") { Description = "Run a model of this config.json's shape with deterministic random weights", HelpName = "CONFIG.json" };
    public Option<string> DummyType { get; } = new Option<string>("--dummy-type") { Description = "Weight type of the --dummy model", DefaultValueFactory = _ => "f16", HelpName = string.Join("|", DummyTypes) };
    public Option<int?> Threads { get; } = new Option<int?>("--threads", "-t") { Description = "CPU threads (default: all cores)", HelpName = "N" }.Int();
    public Option<int?> Context { get; } = new Option<int?>("--ctx", "-c") { Description = "Context length in tokens (default: the model's)", HelpName = "TOKENS" }.Int();
    public Option<string?> Numerics { get; } = new Option<string?>("--numerics") { Description = "CPU arithmetic: fast (default) or llamacpp (ggml's summation orders, f16 KV cache and f16 flash attention: llama.cpp's logits bit for bit for F32 weights, slower)", HelpName = "fast|llamacpp" };
    public Option<string?> KvCache { get; } = new Option<string?>("--kv-cache") { Description = "KV cache block formats: FORMAT or KEYS:VALUES, optional +rN residual window (f32, f16, bf16, fp8, int8, int4, int2, ternary, binary; e.g. f16, int4:int2, int2+r128). Default: plain float32 cache", HelpName = "SPEC" };

    public void AddTo(Command command)
    {
        command.Options.Add(Model);
        command.Options.Add(Dummy);
        command.Options.Add(DummyType);
        command.Options.Add(Threads);
        command.Options.Add(Context);
        command.Options.Add(KvCache);
        command.Options.Add(Numerics);
    }

    /// <summary>The <c>--numerics</c> value (Fast when absent); anything but fast or llamacpp is a usage error.</summary>
    public static KvSharp.Compute.Cpu.CpuNumerics ParseNumerics(string? text) => text?.ToLowerInvariant() switch
    {
        null or "fast" => KvSharp.Compute.Cpu.CpuNumerics.Fast,
        "llamacpp" => KvSharp.Compute.Cpu.CpuNumerics.LlamaCpp,
        _ => throw new UsageException($"--numerics must be fast or llamacpp; got '{text}'"),
    };

    /// <summary>The <c>--kv-cache</c> value as a spec (null when absent); a bad spec is a usage error naming the option.</summary>
    public static KvSharp.Cache.KvCacheSpec? ParseKvCache(string? text)
    {
        if (text == null) return null;
        try { return KvSharp.Cache.KvCacheSpec.Parse(text); }
        catch (KvSharpException e) { throw new UsageException($"--kv-cache: {e.Message}"); }
    }

    /// <summary>Reads and checks the options; throws <see cref="UsageException"/> naming the option.</summary>
    public ModelSource Bind(ParseResult parse, string? positionalModel = null)
    {
        string? model = parse.GetValue(Model);
        if (positionalModel != null && model != null && positionalModel != model)
            throw new UsageException($"the model is given twice ('{positionalModel}' and --model '{model}'): give one");
        model ??= positionalModel;
        string? dummy = parse.GetValue(Dummy);
        if (model != null && dummy != null) throw new UsageException("--model and --dummy cannot be used together: pick a real model or dummy weights");
        if (model == null && dummy == null) throw new UsageException("--model PATH (or --dummy CONFIG.json) is required");
        if (model != null && !File.Exists(model) && !Directory.Exists(model)) throw new UsageException($"--model: '{model}' does not exist");
        if (dummy != null && !File.Exists(dummy)) throw new UsageException($"--dummy: config file '{dummy}' does not exist");
        if (parse.GetResult(DummyType) is { Implicit: false } && dummy == null) throw new UsageException("--dummy-type only applies with --dummy CONFIG.json");

        string dummyType = parse.GetValue(DummyType)!.ToLowerInvariant();
        if (!DummyTypes.Contains(dummyType)) throw new UsageException($"--dummy-type must be one of {string.Join(", ", DummyTypes)}; got '{dummyType}'");

        int? threads = parse.GetValue(Threads);
        if (threads is <= 0) throw new UsageException($"--threads must be > 0, got {threads}");
        int? ctx = parse.GetValue(Context);
        if (ctx is <= 0) throw new UsageException($"--ctx must be > 0, got {ctx}");
        return new ModelSource(model, dummy, dummyType, threads, ctx, ParseKvCache(parse.GetValue(KvCache)))
        {
            Numerics = ParseNumerics(parse.GetValue(Numerics)),
        };
    }
}
