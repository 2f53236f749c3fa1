using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Cli.Commands;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Generation;
using KvSharp.Generation.Chat;
using KvSharp.Models;

namespace KvSharp.Cli.Engine;

/// <summary>
/// <c>kvsharp generate --device cuda</c>: the model's weights and the KV cache in GPU memory (<see cref="CudaTransformer"/>;
/// float16, or packed blocks with <c>--kv-cache</c>: <see cref="CudaPagedKvCache"/>), each next token chosen on the device
/// (<see cref="CudaSampler"/>: the CPU sampler's rules and random sequence), stop strings and text on the host through the
/// same loop as the CPU engine (<see cref="Generator.Run(Tokenization.ITokenizer, int, Generator.NextToken, Func{int}, IReadOnlyList{int}, int, GenerationOptions, Action{string}?, CancellationToken)"/>).
/// --load-cache uploads a saved cache and continues it on the device; --save-cache reads the device cache back
/// (<see cref="CudaPagedKvCache.Download"/>) and saves it as the CPU engine does. --decode-press compresses the paged cache
/// while generating (<see cref="CudaDecodePresses"/>: the CPU session's choices, statistics and eviction on the device).
/// </summary>
internal static class CudaGeneration
{
    public static int Generate(EngineFacade engine, TextWriter status, GenerateRequest request, TextWriter output, CancellationToken cancellation)
    {
        var source = request.Model;
        RefuseResidualWindow(source);
        if (request.Options.DecodeCompression is { } decodePress) CudaDecodePresses.Check(decodePress);
        // Before loading the model: without a GPU this is one "CUDA unavailable: ..." line, at once.
        using var device = CudaDevice.Open();
        using var model = engine.Load(source);
        int ctx = EngineFacade.ContextLength(source, model);
        var template = request.TemplateName == "auto" ? model.ChatTemplate : request.Template;
        string text = template == null ? request.Prompt : template.Format([ChatMessage.User(request.Prompt)], addGenerationPrompt: true);
        var options = template == null ? request.Options
            : request.Options with { StopStrings = [.. request.Options.StopStrings, .. template.EndOfTurnMarkers] };

        var weightType = WeightType(model.Weights);
        using var gpu = new CudaTransformer(device, model.Weights, weightType);
        using var cache = CreateCache(engine, source, model, gpu, device, ctx, paged: options.DecodeCompression != null);
        status.WriteLine(cache is CudaPagedKvCache paged
            ? $"cuda: {device}, {weightType} weights, paged KV cache of {ctx} tokens ({paged.KeyLayout.Format} keys, {paged.ValueLayout.Format} values, {paged.AttentionKernel} attention)"
            : $"cuda: {device}, {weightType} weights, float16 KV cache of {ctx} tokens");
        // After a loaded context the prompt continues it: no second BOS.
        var prompt = model.Encode(text, addBos: cache.Length == 0 && template is not { IncludesBos: true });
        // Sampling on the device: only each chosen token comes back, not the vocabulary's logits.
        using var sampler = new CudaSampler(device, model.Config.VocabSize, options.EffectiveSampler);
        var result = Generator.Run(model.Tokenizer, model.Config.MaxContext, (tokens, history) => gpu.ForwardSample(tokens, cache, sampler, history),
            () => cache.Length, prompt, ctx, options, s => { output.Write(s); output.Flush(); }, cancellation,
            compression => CudaDecodePresses.Start(compression, (CudaPagedKvCache)cache));
        output.WriteLine();
        if (source.SaveCache != null)
        {
            using var saved = ((CudaPagedKvCache)cache).Download();
            engine.SaveCache(source, model, saved);
        }
        if (request.ShowCache)
            status.WriteLine($"prompt {result.PromptTokens} tokens: {result.PrefillTokensPerSecond:F1} tok/s; generated {result.TokenIds.Count} ({result.Reason}): " +
                $"{result.DecodeTokensPerSecond:F1} tok/s; KV cache {cache.Length} tokens, {cache.ByteCount / (1024.0 * 1024.0):F1} MiB allocated on the GPU");
        return result.Reason == StopReason.Cancelled ? 130 : 0;
    }

    /// <summary>
    /// The device KV cache: a --load-cache file loaded on the host as the CPU engine loads it and uploaded block by block
    /// (<see cref="CudaPagedKvCache.Upload(CudaDevice, ModelConfig, PagedKvCache, int, long?)"/>); else the paged cache of
    /// --kv-cache's formats (F32 blocks when only --save-cache asks for a savable cache or a decode press (<paramref name="paged"/>)
    /// for one it can evict from, as on the CPU); else the dense float16 cache.
    /// </summary>
    private static DeviceKvCache CreateCache(EngineFacade engine, ModelSource source, LanguageModel model, CudaTransformer gpu,
        CudaDevice device, int ctx, bool paged)
    {
        if (source.LoadCache != null)
        {
            using var loaded = (PagedKvCache)engine.CreateCache(source, model, ctx);
            return CudaPagedKvCache.Upload(device, model.Config, loaded, ctx);
        }
        var spec = source.KvCache ?? (source.SaveCache != null || paged ? new KvCacheSpec(KvFormat.F32, KvFormat.F32) : null);
        return spec != null
            ? gpu.CreatePagedCache(new PagedKvCacheOptions { KeyFormat = spec.Keys, ValueFormat = spec.Values, MaxTokens = ctx }, ctx)
            : gpu.CreateCache(ctx);
    }

    /// <summary>Refuses a --kv-cache residual window (<c>+rN</c>), which the device cache does not keep (one line, for generate and ask).</summary>
    internal static void RefuseResidualWindow(ModelSource source)
    {
        if (source.KvCache is { ResidualTokens: > 0 } residual)
            throw new UsageException($"--kv-cache {residual} is not supported with --device cuda: the device cache keeps the newest tokens in float32 " +
                "one block at a time (32 tokens per head), not a residual window of +r tokens; drop the +r part");
    }

    /// <summary>The device type for the model's matrices: float32 stays float32 (exact against the CPU), float16 stays float16, the rest bfloat16.</summary>
    internal static DeviceWeightType WeightType(ModelWeights weights) => weights.Find(TensorNames.TokenEmbedding)?.Type switch
    {
        GgmlType.F32 => DeviceWeightType.F32,
        GgmlType.F16 => DeviceWeightType.F16,
        _ => DeviceWeightType.BF16,
    };
}
