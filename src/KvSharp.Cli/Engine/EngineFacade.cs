using KvSharp.Cache;
using KvSharp.Cache.Blocks;
using KvSharp.Cache.Paged;
using KvSharp.Cli.Commands;
using KvSharp.Compression.Sessions;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Generation;
using KvSharp.Generation.Chat;
using Spectre.Console;

namespace KvSharp.Cli.Engine;

/// <summary>The command line's view of the engine: loads models and runs generations for the commands.</summary>
public sealed class EngineFacade : IEngineFacade
{
    private readonly TextWriter _status;

    /// <summary>Creates the engine facade; progress and statistics go to <paramref name="status"/> (stderr).</summary>
    public EngineFacade(TextWriter status) { _status = status; }

    /// <summary>Loads the model a command names, applying --threads.</summary>
    public LanguageModel Load(ModelSource source)
    {
        if (source.Threads is { } t) CpuThreads.Count = t;
        if (source.Path != null) return LanguageModel.Load(source.Path, source.Numerics);
        var type = source.DummyType switch
        {
            "f32" => GgmlType.F32,
            "f16" => GgmlType.F16,
            "bf16" => GgmlType.BF16,
            "q8_0" => GgmlType.Q8_0,
            "q4_0" => GgmlType.Q4_0,
            _ => throw new KvSharpException($"--dummy-type '{source.DummyType}' is not supported"),
        };
        _status.WriteLine($"building dummy weights ({source.DummyType}) from {source.DummyConfig} ...");
        return LanguageModel.FromDummy(source.DummyConfig!, type, numerics: source.Numerics);
    }

    /// <summary>The context length to allocate: --ctx, bounded by the model's trained context.</summary>
    public static int ContextLength(ModelSource source, LanguageModel model)
    {
        int ctx = source.ContextLength ?? model.Config.MaxContext;
        if (ctx > model.Config.MaxContext)
            throw new KvSharpException($"--ctx {ctx} exceeds the model's context length of {model.Config.MaxContext} tokens");
        return ctx;
    }

    /// <inheritdoc />
    public void Info(ModelSource source, TextWriter output)
    {
        using var model = Load(source);
        var c = model.Config;
        var table = new Table().AddColumn("property").AddColumn("value");
        void Row(string k, string v) => table.AddRow(Markup.Escape(k), Markup.Escape(v));
        Row("source", model.Weights.Source);
        Row("architecture", c.Architecture);
        Row("parameters", $"{model.Weights.ParameterCount:N0} ({model.Weights.ParameterCount / 1e6:F2} M)");
        Row("weight bytes", $"{model.Weights.ByteCount:N0} ({Units.Bytes(model.Weights.ByteCount)})");
        Row("weight types", string.Join(", ", model.Weights.Tensors.Values.GroupBy(t => t.Type)
            .Select(g => $"{g.Key}: {g.Count()} tensors, {Units.Bytes(g.Sum(t => t.ByteLength))}")));
        Row("layers", c.NumLayers.ToString());
        Row("hidden / ffn", $"{c.HiddenSize} / {c.IntermediateSize}");
        Row("heads / KV heads / head dim", $"{c.NumHeads} / {c.NumKvHeads} / {c.HeadDim} (GQA group {c.GroupSize})");
        Row("vocabulary", c.VocabSize.ToString());
        Row("context", c.MaxContext.ToString());
        Row("RoPE", $"{c.RopeStyle}, theta {c.RopeTheta}" + (c.RopeScaling is { } s ? $", llama3 scaling x{s.Factor} (original {s.OriginalMaxPositions})" : ""));
        Row("QKV bias / q-k norm / tied output", $"{c.AttentionBias} / {c.QkNorm} / {model.Weights.Find(Models.TensorNames.Output) == null}");
        Row("KV bytes per token", $"{c.KvBytesPerToken(2):N0} (F16), {c.KvBytesPerToken(4):N0} (F32)");
        Row("KV bytes at full context", $"{Units.Bytes(c.KvBytesPerToken(2) * (long)c.MaxContext)} (F16)");
        if (c.HeadDim % 8 == 0)
            Row("KV bytes per token, packed", string.Join(", ", new[] { "f16", "fp8", "int8", "int4", "int2", "int4:int2" }.Select(f =>
            {
                var spec = KvSharp.Cache.KvCacheSpec.Parse(f);
                var k = KvSharp.Cache.Blocks.BlockLayout.ForKeys(spec.Keys, c.HeadDim);
                var v = KvSharp.Cache.Blocks.BlockLayout.ForValues(spec.Values, c.HeadDim);
                double perToken = (double)(k.ByteSize + v.ByteSize) / k.Tokens * c.NumLayers * c.NumKvHeads;
                return $"{perToken:N0} ({f})";
            })));
        Row("tokenizer", $"{model.Tokenizer.GetType().Name}, BOS {model.Tokenizer.BosId?.ToString() ?? "none"}, EOS [{string.Join(", ", model.Tokenizer.EosIds)}]");
        Row("chat template", model.ChatTemplate.Name);
        bool ggmlMatrices = model.Weights.Tensors.Values.Where(t => t.Rows > 1).All(t => GgmlMatMul.IsExact(t.Type));
        Row("CPU numerics", model.Transformer.Numerics == CpuNumerics.Fast ? "fast"
            : ggmlMatrices ? "llamacpp (ggml's arithmetic, f16 KV cache)"
            : "llamacpp (ggml's arithmetic, f16 KV cache; matrices other than F32/F16 use the fast kernels, not ggml's)");
        Render(output, table);
    }

    /// <inheritdoc />
    public int Generate(GenerateRequest request, TextWriter output, CancellationToken cancellation)
    {
        if (request.Device == ComputeDevice.Cuda)
        {
            RefuseCpuNumerics(request.Model);
            return CudaGeneration.Generate(this, _status, request, output, cancellation);
        }
        using var model = Load(request.Model);
        int ctx = ContextLength(request.Model, model);
        var template = request.TemplateName == "auto" ? model.ChatTemplate : request.Template;
        string text = template == null ? request.Prompt : template.Format([ChatMessage.User(request.Prompt)], addGenerationPrompt: true);
        var options = template == null ? request.Options
            : request.Options with { StopStrings = [.. request.Options.StopStrings, .. template.EndOfTurnMarkers] };

        using var cache = CreateCache(request.Model, model, ctx, paged: options.DecodeCompression != null);
        // After a loaded context the prompt continues it: no second BOS.
        var prompt = model.Encode(text, addBos: cache.Length == 0 && template is not { IncludesBos: true });
        var result = model.CreateGenerator().Generate(prompt, cache, ctx, options, s => { output.Write(s); output.Flush(); }, cancellation);
        output.WriteLine();
        SaveCache(request.Model, model, cache);
        if (request.ShowCache) ReportRun(result, cache, model);
        return result.Reason == StopReason.Cancelled ? 130 : 0;
    }

    /// <summary>
    /// The run's KV cache: loaded from --load-cache (checked against this model's fingerprint), else a fresh one of
    /// --kv-cache's formats (f32 blocks when only --save-cache asks for a savable cache, or a decode press
    /// (<paramref name="paged"/>) for one it can evict from).
    /// </summary>
    public IKvCache CreateCache(ModelSource source, LanguageModel model, int ctx, bool paged = false)
    {
        if (source.LoadCache is { } path)
        {
            var loaded = PagedKvCache.Load(path, model.Config, KvCacheFingerprint.Of(model.Weights), ctx);
            _status.WriteLine($"loaded {loaded.Length} tokens of KV cache from {path} ({Units.Bytes(loaded.ByteCount)})");
            return loaded;
        }
        var spec = source.KvCache ?? (source.SaveCache != null || paged ? new KvCacheSpec(KvFormat.F32, KvFormat.F32) : null);
        return model.CreateCache(ctx, spec);
    }

    /// <summary>Saves the cache to --save-cache, if given.</summary>
    public void SaveCache(ModelSource source, LanguageModel model, IKvCache cache)
    {
        if (source.SaveCache is not { } path) return;
        ((PagedKvCache)cache).Save(path, KvCacheFingerprint.Of(model.Weights));
        _status.WriteLine($"saved {cache.Length} tokens of KV cache to {path}");
    }

    /// <inheritdoc />
    public void CacheInfo(string path, TextWriter output)
    {
        string fingerprint = PagedKvCache.SavedFingerprint(path);
        using var cache = PagedKvCache.Load(path, fingerprint);
        var table = new Table().AddColumn("property").AddColumn("value");
        void Row(string k, string v) => table.AddRow(Markup.Escape(k), Markup.Escape(v));
        Row("file", $"{path} ({new FileInfo(path).Length:N0} bytes)");
        Row("model", fingerprint);
        Row("shape", $"{cache.Layers} layers x {cache.KvHeads} KV heads, keys {cache.KeyLayout}, values {cache.ValueLayout}");
        Row("tokens", $"{cache.Length} (stored across heads: {cache.StoredTokens:N0})");
        Row("bytes", $"{cache.ByteCount:N0} ({Units.Bytes(cache.ByteCount)}), compression {cache.CompressionRatio:F2}x vs F16");
        foreach (var (format, bytes) in cache.BytesByFormat().OrderBy(p => p.Key))
            Row($"  in {format}", $"{bytes:N0} bytes");
        for (int l = 0; l < cache.Layers; l++)
        {
            if (cache.SharedLayerSource(l) is var source and >= 0)
            {
                Row($"layer {l}", $"shares layer {source}'s KV (stores none)");
                continue;
            }
            for (int g = 0; g < cache.KvHeads; g++)
            {
                var formats = cache.BytesByFormat(l, g).OrderBy(p => p.Key).Select(p => $"{p.Key} {p.Value:N0}");
                Row($"layer {l}, KV head {g}", $"{cache.Positions(l, g).Count} tokens, {cache.BytesByLayerHead(l, g):N0} bytes ({string.Join(", ", formats)})");
            }
        }
        Render(output, table);
    }

    /// <summary>Prints timings and KV-cache bytes of a run (to stderr, so stdout carries only the text).</summary>
    public void ReportRun(GenerationResult result, IKvCache cache, LanguageModel model)
    {
        var table = new Table().AddColumn("measure").AddColumn("value");
        table.AddRow("prompt tokens", result.PromptTokens.ToString());
        table.AddRow("generated tokens", $"{result.TokenIds.Count} (stopped: {result.Reason})");
        table.AddRow("prefill", $"{result.PrefillTime.TotalMilliseconds:F0} ms, {result.PrefillTokensPerSecond:F1} tok/s");
        table.AddRow("decode", $"{result.DecodeTime.TotalMilliseconds:F0} ms, {result.DecodeTokensPerSecond:F1} tok/s");
        foreach (var (k, v) in CacheReport.Rows(cache, model.Config)) table.AddRow(Markup.Escape(k), Markup.Escape(v));
        Render(_status, table);
    }

    /// <inheritdoc />
    public IChatSession OpenChat(ChatRequest request, CancellationToken cancellation)
    {
        var model = Load(request.Model);
        try
        {
            return new ChatSession(model, request.Template ?? model.ChatTemplate, ContextLength(request.Model, model), request, this);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public int Ask(AskRequest request, TextWriter output, CancellationToken cancellation)
    {
        if (request.Device == ComputeDevice.Cuda)
        {
            RefuseCpuNumerics(request.Model);
            return CudaAsk.Run(this, _status, request, output, cancellation);
        }
        using var model = Load(request.Model);
        int ctx = ContextLength(request.Model, model);
        string text;
        try { text = File.ReadAllText(request.ContextFile); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new KvSharpException($"--context {request.ContextFile}: {e.Message}", e); }
        var tokens = model.Encode(text);
        var options = new CompressedContextOptions
        {
            Cache = request.Model.KvCache ?? KvCacheSpec.Parse("f16"),
            MaxTokens = ctx,
            Press = request.Press?.Press,
            Recall = request.Press?.Recall,
            QueryAware = request.QueryAware,
        };
        _status.WriteLine($"prefilling {tokens.Length} context tokens ({options.Cache} cache), press {request.Press?.Text ?? "none"} ...");
        using var full = request.CompareFull ? CompressedContext.Create(model, tokens, options with { Press = null, Recall = null }) : null;
        // With --compare, one prefill serves both: the compressed context is a fork of the full one.
        using var compressed = full != null && request.Press != null ? full.Compress(request.Press, request.QueryAware)
            : CompressedContext.Create(model, tokens, options);

        var answers = new Table().AddColumn("question").AddColumn("answer");
        if (full != null) answers.AddColumn("full-cache answer");
        answers.AddColumn("decode tok/s");
        var decode = new List<double>();
        var fullDecode = new List<double>();
        var compressTime = compressed.CompressTime + compressed.RecallTime;
        long bytes = compressed.Cache.ByteCount;
        var recall = new List<RecallStatistics>();
        foreach (var question in request.Questions)
        {
            cancellation.ThrowIfCancellationRequested();
            var q = model.Encode(question, addBos: false);
            var a = compressed.Ask(q, request.Options, cancellation: cancellation);
            decode.Add(a.Generation.DecodeTokensPerSecond);
            compressTime += a.CompressTime;
            if (request.QueryAware) bytes = a.CacheBytes;
            if (a.Recall is { } r) recall.Add(r);
            var row = new List<string> { Markup.Escape(question), Markup.Escape(a.Generation.Text.Trim()) };
            if (full != null)
            {
                var f = full.Ask(q, request.Options, cancellation: cancellation);
                fullDecode.Add(f.Generation.DecodeTokensPerSecond);
                row.Add(Markup.Escape(f.Generation.Text.Trim()));
            }
            row.Add($"{a.Generation.DecodeTokensPerSecond:F0}");
            answers.AddRow([.. row]);
        }
        Render(output, answers);

        var stats = new Table().AddColumn("measure").AddColumn("value");
        stats.AddRow("context", $"{tokens.Length} tokens, prefill {compressed.PrefillTime.TotalMilliseconds:F0} ms");
        stats.AddRow("press", Markup.Escape(request.Press?.Text ?? "none") + (request.QueryAware ? " (query-aware, per question)" : ""));
        stats.AddRow("KV bytes before", $"{compressed.BytesBeforeCompression:N0} ({Units.Bytes(compressed.BytesBeforeCompression)})");
        stats.AddRow("KV bytes after", $"{bytes:N0} ({Units.Bytes(bytes)}), {(double)compressed.BytesBeforeCompression / Math.Max(bytes, 1):F2}x smaller");
        stats.AddRow("compression time", $"{compressTime.TotalMilliseconds:F0} ms" + (request.Press?.Recall != null ? " (ClusterKV's clustering included)" : ""));
        if (recall.Count > 0) stats.AddRow("clusterkv recall", Markup.Escape(CacheReport.Recall(recall)));
        stats.AddRow("decode", $"{decode.Average():F1} tok/s" + (fullDecode.Count > 0 ? $" (full cache: {fullDecode.Average():F1} tok/s)" : ""));
        Render(output, stats);
        if (request.ShowCache)
        {
            var table = new Table().AddColumn("measure").AddColumn("value");
            foreach (var (k, v) in CacheReport.Rows(compressed.Cache, model.Config)) table.AddRow(Markup.Escape(k), Markup.Escape(v));
            Render(_status, table);
        }
        return 0;
    }

    /// <summary>Refuses --numerics llamacpp with --device cuda (a CPU mode; the GPU runs its own kernels).</summary>
    private static void RefuseCpuNumerics(ModelSource source)
    {
        if (source.Numerics != CpuNumerics.Fast) throw new KvSharpException("--numerics llamacpp is a CPU mode: --device cuda runs its own kernels");
    }

    internal static void Render(TextWriter writer, Spectre.Console.Rendering.IRenderable what)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(writer), Ansi = AnsiSupport.Detect, ColorSystem = ColorSystemSupport.Detect });
        console.Write(what);
    }
}
