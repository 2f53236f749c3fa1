using System.Diagnostics;
using KvSharp.Cache;
using KvSharp.Cache.Paged;
using KvSharp.Cli.Commands;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation;
using Spectre.Console;

namespace KvSharp.Cli.Engine;

/// <summary>
/// <c>kvsharp ask --device cuda</c>: the context prefilled into a <see cref="CudaPagedKvCache"/> (--kv-cache's formats,
/// f16 by default as on the CPU) and pressed on the device (<see cref="CudaContextPresses.From"/>: SnapKV, TOVA, R-KV, H2O and
/// ZipVL's scorer observe the prefill itself, KVzip its repeat runs, key-norm and R-KV's redundancy the keys read back,
/// StreamingLLM the positions; scores, eviction and re-quantization (KIVI, KVTuner, MiKV, ZipVL, LeanKV) on the GPU, the CPU
/// press's budget or tiers on the host; sequences press by press), then each question appended, answered with the device sampler and
/// rolled back to the compressed context (<see cref="CudaPagedKvCache.Restore"/>). The same protected prefix (the
/// BOS), capacity and answer length as the CPU's <c>ask</c>, so with float32 weights the two give the same answers.
/// --decode-press compresses each answer's copy of the context while it is generated (<see cref="CudaDecodePresses"/>). Presses
/// the device does not run, clusterkv, --query-aware and --compare are refused in one line.
/// </summary>
internal static class CudaAsk
{
    public static int Run(EngineFacade engine, TextWriter status, AskRequest request, TextWriter output, CancellationToken cancellation)
    {
        if (request.QueryAware) throw new UsageException("--query-aware is not supported with --device cuda: the device presses the context once, question-agnostic");
        if (request.CompareFull) throw new UsageException("--compare is not supported with --device cuda: answer with --device cpu to compare against the full cache");
        if (request.Press?.Recall != null) throw new UsageException($"--press {request.Press.Text}: clusterkv recall does not run on the GPU; use --device cpu");
        if (request.Options.DecodeCompression is { } decodePress) CudaDecodePresses.Check(decodePress);
        CudaGeneration.RefuseResidualWindow(request.Model);
        var press = request.Press?.Press is { } p ? CudaContextPresses.From(p) : null; // a press the device does not run: one line naming it
        if (press is CudaVidKvPress && request.Options.DecodeCompression is { } decoding)
            throw new UsageException($"--decode-press {decoding.Text} cannot follow --press {press.Text} on the GPU: the device does not evict VidKV blocks");
        string text;
        try { text = File.ReadAllText(request.ContextFile); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new KvSharpException($"--context {request.ContextFile}: {e.Message}", e); }

        using var device = CudaDevice.Open();
        using var model = engine.Load(request.Model);
        int ctx = EngineFacade.ContextLength(request.Model, model);
        var tokens = model.Encode(text);
        var spec = request.Model.KvCache ?? KvCacheSpec.Parse("f16");
        var weightType = CudaGeneration.WeightType(model.Weights);
        using var gpu = new CudaTransformer(device, model.Weights, weightType);
        using var cache = gpu.CreatePagedCache(new PagedKvCacheOptions { KeyFormat = spec.Keys, ValueFormat = spec.Values, MaxTokens = ctx }, ctx);
        status.WriteLine($"cuda: {device}, {weightType} weights, paged KV cache of {ctx} tokens ({spec} cache, {cache.AttentionKernel} attention); " +
            $"prefilling {tokens.Length} context tokens, press {request.Press?.Text ?? "none"} ...");

        var clock = Stopwatch.StartNew();
        if (press != null) press.Prefill(gpu, cache, tokens); // SnapKV, TOVA, H2O: the statistics collected on the way
        else gpu.Forward(tokens, cache);
        var prefill = clock.Elapsed;
        long before = cache.BytesReadPerToken;
        // As CompressedContext: a leading BOS is never evicted.
        int protectedPrefix = model.Tokenizer.BosId is { } bos && tokens.Length > 0 && tokens[0] == bos ? 1 : 0;
        clock.Restart();
        press?.Compress(gpu, cache, tokens, model.Tokenizer, model.ChatTemplateText != null ? model.ChatTemplate : null, protectedPrefix, out _);
        var compress = clock.Elapsed;
        long after = cache.BytesReadPerToken;

        var answers = new Table().AddColumn("question").AddColumn("answer").AddColumn("decode tok/s");
        var decode = new List<double>();
        using var sampler = new CudaSampler(device, model.Config.VocabSize, request.Options.EffectiveSampler);
        // A decode press evicts context tokens while answering, which a checkpoint does not undo (it rolls appends back):
        // each answer then runs on a copy of the compressed context, uploaded from one read-back, as the CPU answers on a fork.
        using var compressed = request.Options.DecodeCompression != null ? cache.Download() : null;
        using (var context = cache.Save())
            foreach (var question in request.Questions)
            {
                cancellation.ThrowIfCancellationRequested();
                var q = model.Encode(question, addBos: false);
                sampler.Restart(); // each answer draws the seed's sequence from its start, as the CPU's new sampler per question does
                using var copy = compressed != null ? CudaPagedKvCache.Upload(device, model.Config, compressed, ctx) : null;
                var answering = copy ?? cache;
                try
                {
                    var result = Generator.Run(model.Tokenizer, model.Config.MaxContext, (t, history) => gpu.ForwardSample(t, answering, sampler, history),
                        () => answering.Length, q, ctx, request.Options, cancellation: cancellation,
                        startDecode: compression => CudaDecodePresses.Start(compression, answering));
                    decode.Add(result.DecodeTokensPerSecond);
                    answers.AddRow(Markup.Escape(question), Markup.Escape(result.Text.Trim()), $"{result.DecodeTokensPerSecond:F0}");
                }
                finally
                {
                    cache.Restore(context); // the next question starts from the compressed context again
                }
            }
        EngineFacade.Render(output, answers);

        var stats = new Table().AddColumn("measure").AddColumn("value");
        // SnapKV, TOVA and H2O collect their statistics during the prefill (the CPU re-runs those queries in its press time).
        string observed = ObservesPrefill(press) ? ", the press's attention statistics collected" : "";
        stats.AddRow("context", $"{tokens.Length} tokens, prefill {prefill.TotalMilliseconds:F0} ms (GPU{observed})");
        stats.AddRow("press", Markup.Escape(request.Press?.Text ?? "none") + " (on the GPU)");
        stats.AddRow("KV bytes before", $"{before:N0} ({Units.Bytes(before)}) of blocks");
        stats.AddRow("KV bytes after", $"{after:N0} ({Units.Bytes(after)}), {(double)before / Math.Max(after, 1):F2}x smaller");
        stats.AddRow("compression time", $"{compress.TotalMilliseconds:F0} ms");
        stats.AddRow("decode", $"{(decode.Count > 0 ? decode.Average() : 0):F1} tok/s");
        EngineFacade.Render(output, stats);
        if (request.ShowCache)
            status.WriteLine($"KV cache on the GPU: {after:N0} bytes of blocks per decode step over {cache.HeadLengths().Sum():N0} stored tokens (all heads), " +
                $"{Units.Bytes(cache.ByteCount)} allocated");
        return 0;
    }

    /// <summary>Whether the press collects attention statistics during the prefill (SnapKV, TOVA, R-KV, H2O, ZipVL's scorer, KV-Compress; first in a sequence, ranking tiers or KVCrush's importance).</summary>
    private static bool ObservesPrefill(ICudaContextPress? press) => press switch
    {
        CudaWindowPress or CudaH2oPress or CudaKvCompressPress => true,
        CudaQuantizationPress quantization => ObservesPrefill(quantization.Scoring),
        CudaKvCrushPress crush => ObservesPrefill(crush.Inner),
        CudaSequencePress sequence => ObservesPrefill(sequence.Presses[0]),
        _ => false,
    };
}
