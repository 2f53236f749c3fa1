namespace KvSharp.GpuTests.Checks;

/// <summary>Every GPU check by name, for the console runner.</summary>
public static class GpuCheckList
{
    /// <summary>The checks; the model checks need stories260K at <paramref name="stories260K"/>, KVzip's the needle model's folder at <paramref name="needle"/>.</summary>
    public static IReadOnlyList<(string Name, Func<string> Run)> All(string stories260K, string needle) =>
    [
        ("rmsnorm", KernelChecks.RmsNorm),
        ("qkv+rope+append", KernelChecks.QkvRopeAppend),
        ("elementwise", KernelChecks.Elementwise),
        ("embedding", KernelChecks.Embedding),
        ("gemv", KernelChecks.Gemv),
        ("gemv qkv+rope+append", KernelChecks.GemvQkvRope),
        ("cublas", KernelChecks.CublasGemm),
        ("attention", KernelChecks.Attention),
        ("flash prefill", KernelChecks.FlashPrefill),
        ("argmax", KernelChecks.ArgMax),
        ("gemv+argmax (output head)", KernelChecks.GemvArgMax),
        ("sampling: device sampler = float64 reference", SamplingChecks.DeviceMatchesReference),
        ("paged: attention, every supported format and mixed", PagedChecks.Attention),
        ("paged: device append = CPU codec bytes", PagedChecks.AppendMatchesCpuCodec),
        ("paged: device evict keeps the CPU evict's tokens", PagedChecks.EvictMatchesCpu),
        ("vidkv: attention over uploaded VidKV blocks = float64 and CPU attention", VidKvChecks.Attention),
        ("vidkv: transformer over an uploaded VidKV cache = CPU engine", VidKvChecks.TransformerMatchesCpu),
        ("vidkv: what the device does not do with VidKV is refused", VidKvChecks.Refusals),
        ("vidkv press: VidKV blocks encoded on the device = the CPU codec byte for byte", VidKvChecks.EncodeMatchesCpu),
        ("paged: transformer over the paged cache", PagedChecks.TransformerMatchesCpu),
        ("paged: append fused into the QKV product = separate append", PagedChecks.FusedAppendMatchesUnfused),
        ("paged: stress, residual fills in the fused append under the pipelined attention = CPU engine", AppendStressChecks.FillsMatchCpu),
        ("paged: append fused into the QKV product reports a full pool", PagedChecks.FusedAppendReportsFullPool),
        ("cache files: a loaded cache continues on the device", CacheFileChecks.LoadedCacheDecodesOnDevice),
        ("cache files: a device cache read back = its blocks and positions", CacheFileChecks.DownloadedCacheMatchesDevice),
        ("paged batch: attention over 3 and 8 sequences, per-sequence evict", PagedBatchChecks.Attention),
        ("paged batch: pipelined plan over heads of 0 to 700 tokens", PagedBatchChecks.UnequalHeads),
        ("paged batch: greedy decode of 8 sequences = each alone", PagedBatchChecks.Decode),
        ("paged batch: SnapKV on one sequence of a batch = the CPU press", PagedBatchChecks.SnapKvOneSequence),
        ("press: device attention statistics = CPU statistics", PressChecks.StatisticsMatchCpu),
        ("press: device re-quantization = CPU blocks", PressChecks.RequantizeMatchesCpu),
        ("press: SnapKV on the device keeps the CPU press's tokens", PressChecks.SnapKvMatchesCpu),
        ("press: H2O on the device keeps the CPU press's tokens", PressChecks.H2oMatchesCpu),
        ("press: KVzip and KVzip+ on the device = the CPU press (needle model)", () => KvzipChecks.MatchesCpu(needle)),
        ("press: ask's device presses (SnapKV, TOVA, H2O, key-norm, StreamingLLM, random, R-KV, ZipVL scorer, KV-Compress; uniform, pyramid, AdaKV, dynamic, global) = the CPU presses (needle model)",
            () => ContextPressChecks.MatchesCpu(needle)),
        ("press: ask's device quantization presses (KIVI, KVTuner, MiKV, ZipVL, LeanKV), press sequences and KVCrush = the CPU presses' tokens and formats (needle model)",
            () => QuantizationPressChecks.MatchesCpu(needle)),
        ("model: qwen-shaped dummy", ModelChecks.QwenShapedDummy),
        ("model: llama-shaped dummy", ModelChecks.LlamaShapedDummy),
        ("model: batch decode", ModelChecks.BatchDecode),
        ("model: stories260K", () => ModelChecks.Stories260K(stories260K)),
        ("model: stories260K sampled on the device = CPU sampler", () => ModelChecks.Stories260KSampled(stories260K)),
        ("model: sampled decode in the graph (dense, paged f32/f16) = CPU engine + sampler", ModelChecks.SampledGraphMatchesCpu),
    ];
}
