using KvSharp.Generation;
using KvSharp.Generation.Chat;

namespace KvSharp.Cli.Commands;

/// <summary>Which model a command runs: a file/folder, or dummy weights shaped by a config.json.</summary>
/// <param name="Path">GGUF file or Hugging Face model folder (<c>--model</c>); null with <paramref name="DummyConfig"/>.</param>
/// <param name="DummyConfig">config.json whose shapes get deterministic random weights (<c>--dummy</c>).</param>
/// <param name="DummyType">Weight type of the dummy model (<c>--dummy-type</c>): f16, bf16, f32, q8_0 or q4_0.</param>
/// <param name="Threads">CPU threads (<c>--threads</c>); null = the engine's default.</param>
/// <param name="ContextLength">Context length to allocate (<c>--ctx</c>); null = the model's own.</param>
/// <param name="KvCache">KV cache formats (<c>--kv-cache</c>); null = the float32 cache.</param>
public sealed record ModelSource(string? Path, string? DummyConfig, string DummyType, int? Threads, int? ContextLength, KvSharp.Cache.KvCacheSpec? KvCache = null)
{
    /// <summary>A saved KV cache to start from (<c>--load-cache</c>): the prompt continues after its tokens, in its formats.</summary>
    public string? LoadCache { get; init; }

    /// <summary>Where to save the KV cache after the run (<c>--save-cache</c>; chat: after each answer).</summary>
    public string? SaveCache { get; init; }

    /// <summary>The CPU arithmetic (<c>--numerics</c>).</summary>
    public KvSharp.Compute.Cpu.CpuNumerics Numerics { get; init; }

    /// <summary>A short description for messages ("model.gguf" or "dummy weights (bf16) from config.json").</summary>
    public override string ToString() => Path ?? $"dummy weights ({DummyType}) from {DummyConfig}";
}

/// <summary>What <c>kvsharp generate</c> asks for.</summary>
/// <param name="Model">The model to load.</param>
/// <param name="Prompt">The prompt text (<c>--prompt</c>).</param>
/// <param name="Template">A chat template to wrap the prompt in as one user turn (<c>--template</c>); null = raw text.</param>
/// <param name="TemplateName">"auto" when the template must come from the model (the engine detects it), else the name given.</param>
/// <param name="Options">Sampling, length and stop conditions, already validated.</param>
/// <param name="ShowCache">Whether to report KV-cache size and timings afterwards (<c>--show-cache</c>).</param>
public sealed record GenerateRequest(ModelSource Model, string Prompt, IChatTemplate? Template, string? TemplateName, GenerationOptions Options, bool ShowCache)
{
    /// <summary>Where the model runs (<c>--device</c>): the CPU engine, or an NVIDIA GPU.</summary>
    public ComputeDevice Device { get; init; } = ComputeDevice.Cpu;
}

/// <summary>Where <c>kvsharp generate</c> runs the model.</summary>
public enum ComputeDevice
{
    /// <summary>The CPU engine (the default; every cache format and press).</summary>
    Cpu,
    /// <summary>The CUDA backend: weights and a float16 KV cache in GPU memory, sampling on the host.</summary>
    Cuda,
}

/// <summary>What <c>kvsharp chat</c> asks for.</summary>
/// <param name="Model">The model to load.</param>
/// <param name="Template">The chat template named by <c>--template</c>; null for "auto" (the engine calls <see cref="ChatTemplates.Detect"/>).</param>
/// <param name="SystemPrompt">System prompt (<c>--system</c>), if any.</param>
/// <param name="Options">Sampling, length and stop conditions per answer, already validated.</param>
/// <param name="ShowCache">Whether to report KV-cache size after each answer (<c>--show-cache</c>).</param>
public sealed record ChatRequest(ModelSource Model, IChatTemplate? Template, string? SystemPrompt, GenerationOptions Options, bool ShowCache);

/// <summary>What <c>kvsharp ask</c> asks for: one context, compressed once, several questions.</summary>
/// <param name="Model">The model to load (its <c>--kv-cache</c> spec picks the paged cache's formats; default f16).</param>
/// <param name="ContextFile">Text file holding the context (<c>--context</c>).</param>
/// <param name="Press">The press and ClusterKV recall, already parsed (<c>--press</c>); null = no compression.</param>
/// <param name="Questions">Questions, each appended to the compressed context and rolled back (<c>--question</c>, repeatable).</param>
/// <param name="QueryAware">Compress a copy per question with the question seen (<c>--query-aware</c>).</param>
/// <param name="CompareFull">Also answer from the uncompressed cache and print both (<c>--compare</c>).</param>
/// <param name="Options">Sampling, length and stop conditions per answer, already validated.</param>
/// <param name="ShowCache">Whether to print the cache's byte breakdown (<c>--show-cache</c>).</param>
public sealed record AskRequest(ModelSource Model, string ContextFile, KvSharp.Compression.Sessions.ContextPress? Press, IReadOnlyList<string> Questions,
    bool QueryAware, bool CompareFull, GenerationOptions Options, bool ShowCache)
{
    /// <summary>Where the model runs (<c>--device</c>): the CPU engine, or an NVIDIA GPU (prefill, KVzip press and answers).</summary>
    public ComputeDevice Device { get; init; } = ComputeDevice.Cpu;
}

/// <summary>A loaded model holding a conversation; the engine may keep its KV cache between turns.</summary>
public interface IChatSession : IDisposable
{
    /// <summary>The template in use (given or detected), so the loop can report it.</summary>
    IChatTemplate Template { get; }

    /// <summary>
    /// Generates the assistant's answer to <paramref name="conversation"/> (which ends with the user's turn),
    /// streaming its text through <paramref name="onText"/>; returns the full answer without stop strings or EOS.
    /// </summary>
    string Respond(IReadOnlyList<ChatMessage> conversation, Action<string> onText, CancellationToken cancellation);
}

/// <summary>
/// The seam between the command line and the engine: the CLI parses and validates, the engine loads models and
/// generates. Errors in user input (bad model file, prompt too long for the context) are thrown as
/// <see cref="KvSharpException"/>; the CLI prints their message and exits with code 1.
/// </summary>
public interface IEngineFacade
{
    /// <summary>Prints the model's metadata (architecture, shapes, tokenizer, chat template, KV bytes per token).</summary>
    void Info(ModelSource model, TextWriter output);

    /// <summary>Prints a saved KV cache's shape, formats and bytes per layer, KV head and format (<c>kvsharp info --cache</c>).</summary>
    void CacheInfo(string path, TextWriter output);

    /// <summary>Generates a continuation of the prompt, streaming text to <paramref name="output"/>; returns the exit code.</summary>
    int Generate(GenerateRequest request, TextWriter output, CancellationToken cancellation);

    /// <summary>Loads the model for an interactive conversation.</summary>
    IChatSession OpenChat(ChatRequest request, CancellationToken cancellation);

    /// <summary>Prefills and compresses a context once, answers every question from it, and prints answers, bytes and times; returns the exit code.</summary>
    int Ask(AskRequest request, TextWriter output, CancellationToken cancellation);
}
