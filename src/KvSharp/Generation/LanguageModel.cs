using System.Text.Json;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Generation.Chat;
using KvSharp.Models;
using KvSharp.Models.Loading;
using KvSharp.Tokenization;

namespace KvSharp.Generation;

/// <summary>
/// A ready-to-run model: weights, tokenizer, transformer and chat template, loaded from a GGUF file,
/// a Hugging Face folder, or dummy weights shaped by a config.json. The entry point of the library.
/// </summary>
public sealed class LanguageModel : IDisposable
{
    private LanguageModel(ModelWeights weights, ITokenizer tokenizer, string? chatTemplateText, CpuNumerics numerics)
    {
        Weights = weights;
        Tokenizer = tokenizer;
        Transformer = new Transformer(weights, numerics);
        ChatTemplateText = chatTemplateText;
        ChatTemplate = ChatTemplates.Detect(chatTemplateText, weights.Config.Architecture);
    }

    /// <summary>The weights (memory-mapped or generated).</summary>
    public ModelWeights Weights { get; }

    /// <summary>The architecture.</summary>
    public ModelConfig Config => Weights.Config;

    /// <summary>The vocabulary.</summary>
    public ITokenizer Tokenizer { get; }

    /// <summary>The forward pass.</summary>
    public Transformer Transformer { get; }

    /// <summary>The model's own chat template text (GGUF tokenizer.chat_template or tokenizer_config.json), if any.</summary>
    public string? ChatTemplateText { get; }

    /// <summary>The chat template detected from <see cref="ChatTemplateText"/> or the architecture.</summary>
    public IChatTemplate ChatTemplate { get; }

    /// <summary>
    /// Loads a model from a <c>.gguf</c> file or a Hugging Face folder (config.json, tokenizer.json,
    /// safetensors). Errors name the file and the problem.
    /// </summary>
    public static LanguageModel Load(string path) => Load(path, CpuNumerics.Fast);

    /// <summary><see cref="Load(string)"/> computing with <paramref name="numerics"/>.</summary>
    public static LanguageModel Load(string path, CpuNumerics numerics)
    {
        ITokenizer? ggufTokenizer = null;
        string? ggufTemplate = null;
        var weights = ModelLoader.Load(path, gguf =>
        {
            ggufTokenizer = TokenizerLoader.FromGguf(gguf);
            ggufTemplate = gguf.Get<string?>("tokenizer.chat_template", null);
        });
        try
        {
            if (ggufTokenizer != null) return new LanguageModel(weights, ggufTokenizer, ggufTemplate, numerics);
            string dir = Directory.Exists(path) ? path : Path.GetDirectoryName(Path.GetFullPath(path))!;
            return new LanguageModel(weights, TokenizerLoader.FromDirectory(dir), ReadHfChatTemplate(dir), numerics);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Builds a model of <paramref name="configPath"/>'s shape with deterministic random weights of
    /// <paramref name="type"/>. Uses the tokenizer.json beside the config when there is one, else byte tokens.
    /// <paramref name="numerics"/> picks the CPU arithmetic.
    /// </summary>
    public static LanguageModel FromDummy(string configPath, GgmlType type, int seed = 0, CpuNumerics numerics = CpuNumerics.Fast)
    {
        var config = HfConfigReader.Read(configPath);
        var weights = DummyWeights.Create(config, type, seed);
        try
        {
            string dir = Path.GetDirectoryName(Path.GetFullPath(configPath))!;
            ITokenizer tokenizer = File.Exists(Path.Combine(dir, "tokenizer.json"))
                ? TokenizerLoader.FromDirectory(dir)
                : new ByteTokenizer(config.VocabSize, config.BosTokenId, config.EosTokenIds);
            return new LanguageModel(weights, tokenizer, ReadHfChatTemplate(dir), numerics);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Tokenizes <paramref name="text"/> with the model's BOS convention. <paramref name="addBos"/> = false
    /// when the text continues a conversation already in the cache.
    /// </summary>
    public int[] Encode(string text, bool addBos = true) => Tokenizer.Encode(text, addSpecial: addBos, parseSpecial: true);

    /// <summary>
    /// Creates an empty KV cache for up to <paramref name="contextLength"/> tokens: the transformer's own (float32, or f16
    /// under <see cref="CpuNumerics.LlamaCpp"/>), or the paged block cache in the formats of <paramref name="spec"/> (e.g. <c>KvCacheSpec.Parse("int4:int2")</c>).
    /// </summary>
    public Cache.IKvCache CreateCache(int contextLength, Cache.KvCacheSpec? spec = null) =>
        spec == null ? Transformer.CreateCache(contextLength) : spec.Create(Config, contextLength);

    /// <summary>A generator over this model.</summary>
    public Generator CreateGenerator() => new(Transformer, Tokenizer);

    private static string? ReadHfChatTemplate(string dir)
    {
        string cfg = Path.Combine(dir, "tokenizer_config.json");
        if (!File.Exists(cfg)) return null;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(cfg));
            return doc.RootElement.TryGetProperty("chat_template", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        }
        catch (JsonException e)
        {
            throw new KvSharpException($"{cfg}: not valid JSON ({e.Message})", e);
        }
    }

    /// <inheritdoc />
    public void Dispose() => Weights.Dispose();
}
