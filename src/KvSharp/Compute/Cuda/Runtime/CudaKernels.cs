namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>Element type of a device weight matrix.</summary>
public enum DeviceWeightType
{
    /// <summary>bfloat16 (the usual inference precision: float32's range, 8 bits of mantissa).</summary>
    BF16,
    /// <summary>IEEE half precision.</summary>
    F16,
    /// <summary>float32 (exact against the CPU engine on float32 models; twice the bytes of BF16).</summary>
    F32,
}

/// <summary>
/// Typed launchers of the embedded kernels (elementwise.cu, gemv.cu, attention.cu), compiled for the
/// device on first use. Every method only queues work on the device's stream.
/// </summary>
internal sealed class CudaKernels : IDisposable
{
    private const int Threads = 256;
    private readonly CudaDevice _device;
    private readonly CudaModule _elementwise, _gemv, _attention;

    public CudaKernels(CudaDevice device)
    {
        _device = device;
        _elementwise = CudaModule.LoadEmbedded(device, "elementwise.cu");
        // Every product loads its first weights before griddepcontrol.wait (gemv.cuh's GEMV_PREFETCH, gemv_mma.cuh's ring), and
        // keeps its activations in L1 (CudaFunction.PreferL1: the paged attention's carve-out left it 28 KB).
        _gemv = CudaModule.LoadEmbedded(device, "gemv.cu", _ => true, preferL1Threads: Threads);
        // The pipelined streaming attention issues its first K/V loads before griddepcontrol.wait (attention.cu).
        _attention = CudaModule.LoadEmbedded(device, "attention.cu",
            name => name.StartsWith("attn_h", StringComparison.Ordinal) && !name.EndsWith("_serial", StringComparison.Ordinal));
    }

    public CudaDevice Device => _device;

    /// <summary>Whether attention has a kernel for <paramref name="group"/> query heads per KV head (the ATTN instances in attention.cu).</summary>
    public static bool SupportsGroup(int group) => group is >= 1 and <= 8 or 16;

    /// <summary>Largest number of activation rows the matrix-vector kernels take (beyond it, cuBLAS).</summary>
    public const int MaxGemvRows = 8;

    public static string Suffix(DeviceWeightType t) => t switch
    {
        DeviceWeightType.BF16 => "bf16",
        DeviceWeightType.F16 => "f16",
        _ => "f32",
    };

    public static int ElementBytes(DeviceWeightType t) => t == DeviceWeightType.F32 ? 4 : 2;

    private int GridFor(long n) => (int)Math.Min((n + Threads - 1) / Threads, (long)_device.MultiprocessorCount * 16);

    public void Embed(DeviceWeightType type, ulong table, ulong tokens, ulong output, int n, int cols) =>
        _elementwise["embed_" + Suffix(type)].Launch(n, Threads, 0, table, tokens, output, Arg.Int(cols));

    /// <summary>One block per row (prefill; decode fuses the norm into the next matrix-vector product).</summary>
    public void RmsNorm(ulong x, ulong weight, ulong y, int rows, int cols, float eps) =>
        _elementwise["rmsnorm"].Launch(rows, cols >= 2048 ? 1024 : Threads, 0, x, weight, y, Arg.Int(cols), Arg.Float(eps));

    /// <summary>Fused SwiGLU of a [rows, 2·ffn] gate/up product into out [rows, ffn].</summary>
    public void SwiGluRows(ulong gateUp, ulong output, int ffn, int rows) =>
        _elementwise["swiglu_rows"].Launch(GridFor((long)rows * ffn), Threads, 0, gateUp, output, Arg.Int(ffn), Arg.Long((long)rows * ffn));

    public void AddBias(ulong x, ulong bias, int cols, long n) =>
        _elementwise["add_bias"].Launch(GridFor(n), Threads, 0, x, bias, Arg.Int(cols), Arg.Long(n));

    public void Narrow(DeviceWeightType type, ulong x, ulong y, long n) =>
        _elementwise[type == DeviceWeightType.F16 ? "to_f16" : "to_bf16"].Launch(GridFor(n), Threads, 0, x, y, Arg.Long(n));

    /// <summary>
    /// From a fused QKV product [rows, (heads + 2·kvHeads)·hd]: optional per-head q/k RMSNorm (null weights skip it),
    /// RoPE at positions *position.., queries to <paramref name="qOut"/>, keys and values into one layer's float16 cache.
    /// With <paramref name="seqStride"/> (elements) non-zero, row t is sequence t of a batch: its cache is t·seqStride
    /// further and its position is position[t].
    /// </summary>
    public void QkvRopeAppend(ulong qkv, ulong qOut, ulong qNorm, ulong kNorm, ulong invFreq, ulong kCache, ulong vCache,
        int rows, int heads, int kvHeads, int headDim, int capacity, ulong position, bool interleaved, float eps, long seqStride = 0) =>
        _elementwise["qkv_rope_append"].Launch(rows * (heads + kvHeads), 64, 0, qkv, qOut, qNorm, kNorm, invFreq, kCache, vCache,
            Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim), Arg.Int(capacity), position, Arg.Int(interleaved ? 1 : 0), Arg.Float(eps),
            Arg.Long(seqStride));

    /// <summary>
    /// Greedy token of each of <paramref name="rows"/> logits rows into next[t] (and history[t·historyStride + position[t]]);
    /// position[t] += advance.
    /// </summary>
    public void ArgMax(ulong logits, int n, ulong next, ulong history, ulong position, int advance, int rows = 1, long historyStride = 0) =>
        _elementwise["argmax"].Launch(rows, 1024, 0, logits, Arg.Int(n), next, history, position, Arg.Int(advance), Arg.Long(historyStride));

    /// <summary>
    /// The output head of <paramref name="n"/> decode rows (1..<see cref="MaxGemvRows"/>) with the final norm: logits
    /// [n, rows] into <paramref name="y"/> and each row's greedy choice folded into best[t] (one 64-bit key a row, zero
    /// before the launch; <see cref="ArgMaxFinish"/> reads and clears them), instead of a separate pass over the logits.
    /// Several rows go through the tensor-core product where <see cref="Gemv"/> would take it.
    /// </summary>
    public void GemvArgMax(DeviceWeightType type, ulong w, ulong x, ulong y, int rows, int cols, ulong norm, float eps, ulong best, int n = 1)
    {
        if (n < 1 || n > MaxGemvRows) throw new ArgumentOutOfRangeException(nameof(n), n, $"matrix-vector kernels take 1..{MaxGemvRows} rows");
        if (UsesTensorCoreGemv(type, cols, n))
        {
            var mma = _gemv[$"gemv_mma_{Suffix(type)}_argmax_norm"];
            mma.Launch(TensorCoreGemvBlocks(mma, (rows + 15) / 16), Threads, 0, w, x, y, norm, Arg.Float(eps), Arg.Int(rows), Arg.Int(cols), Arg.Int(n), best);
            return;
        }
        const int warpsPerBlock = Threads / 32;
        int warps = (rows + 1) / 2;
        _gemv[$"gemv_{Suffix(type)}_argmax_norm_{n}"].Launch((warps + warpsPerBlock - 1) / warpsPerBlock, Threads, 0, w, x, y, norm, Arg.Float(eps),
            Arg.Int(rows), Arg.Int(cols), best);
    }

    /// <summary>The greedy tokens of <see cref="GemvArgMax"/> (keys best[rows]) into next/history/position, as <see cref="ArgMax"/> writes them.</summary>
    public void ArgMaxFinish(ulong best, ulong next, ulong history, ulong position, int advance, int rows = 1, long historyStride = 0) =>
        _elementwise["argmax_finish"].Launch(1, 32, 0, best, Arg.Int(rows), next, history, position, Arg.Int(advance), Arg.Long(historyStride));

    public void FillRandomF16(ulong p, long n, uint seed, float scale) =>
        _elementwise["fill_random_f16"].Launch(GridFor(n), Threads, 0, p, Arg.Long(n), seed, Arg.Float(scale));

    /// <summary>What a matrix-vector kernel does with its dot products.</summary>
    public enum GemvMode
    {
        /// <summary>y = w·x.</summary>
        Store,
        /// <summary>y += w·x (the residual add fused).</summary>
        Accumulate,
        /// <summary>w holds gate rows then up rows ([2·rows, cols]); y = silu(gate·x) · (up·x).</summary>
        SwiGlu,
    }

    /// <summary>
    /// Whether 2..8 rows over 16-bit weights go through the tensor-core kernel (gemv_mma_*; the activations rounded to
    /// the weight type) rather than the float32 CUDA-core one. On by default; benchmarks compare both.
    /// </summary>
    public bool UseTensorCoreGemv { get; set; } = true;

    /// <summary>The tensor-core kernel splits the columns over 8 warps of 32: widths must be multiples of this.</summary>
    public const int TensorCoreGemvColumns = 256;

    /// <summary>
    /// y[n, rows] (=, += or SwiGLU of) x[n, cols] · wᵀ for n ≤ <see cref="MaxGemvRows"/>. A non-zero <paramref name="norm"/>
    /// (Store and SwiGlu only) multiplies by RMSNorm(x)·norm instead of x: the decode step's norms fused in.
    /// <paramref name="narrow"/> (tensor-core products only, see <see cref="UsesNarrowFfn"/>): SwiGlu stores y in the
    /// weights' 16-bit type, Accumulate reads x in it.
    /// </summary>
    public void Gemv(DeviceWeightType type, ulong w, ulong x, ulong y, int rows, int cols, int n, GemvMode mode = GemvMode.Store,
        ulong norm = 0, float eps = 0, bool narrow = false)
    {
        if (n < 1 || n > MaxGemvRows) throw new ArgumentOutOfRangeException(nameof(n), n, $"matrix-vector kernels take 1..{MaxGemvRows} rows");
        if (norm != 0 && mode == GemvMode.Accumulate) throw new ArgumentException("the fused norm needs whole rows per warp (Store or SwiGlu)", nameof(norm));
        if (narrow && (mode == GemvMode.Store || (mode == GemvMode.SwiGlu && norm == 0) || !UsesTensorCoreGemv(type, cols, n)))
            throw new ArgumentException("16-bit activations are the normed SwiGLU product's output and the accumulating product's input, through tensor cores", nameof(narrow));
        string name = mode switch { GemvMode.Accumulate => "_acc", GemvMode.SwiGlu => "_swiglu", _ => "" } + (norm != 0 ? "_norm" : "") + (narrow ? "_h16" : "");
        if (UsesTensorCoreGemv(type, cols, n))
        {
            // Tiles of 16 output rows (8 gate/up pairs for SwiGLU), the columns split over a block's 8 warps.
            int perTile = mode == GemvMode.SwiGlu ? 8 : 16;
            var mma = _gemv[$"gemv_mma_{Suffix(type)}{name}"];
            mma.Launch(TensorCoreGemvBlocks(mma, (rows + perTile - 1) / perTile), Threads, 0, w, x, y, norm, Arg.Float(eps),
                Arg.Int(rows), Arg.Int(cols), Arg.Int(n));
            return;
        }
        const int warpsPerBlock = Threads / 32;
        int warps = mode == GemvMode.SwiGlu ? rows : (rows + 1) / 2; // two output rows per warp (a gate/up pair for SwiGLU)
        var f = _gemv[$"gemv_{Suffix(type)}{name}_{n}"];
        int ksplit = mode == GemvMode.Accumulate ? AccumulateSplit(f, warps, cols, n) : 1;
        warps *= ksplit;
        f.Launch((warps + warpsPerBlock - 1) / warpsPerBlock, Threads, 0, w, x, y, norm, Arg.Float(eps), Arg.Int(rows), Arg.Int(cols), Arg.Int(ksplit));
    }

    /// <summary>
    /// Whether the feed-forward of <paramref name="n"/> rows passes its SwiGLU output to the down product in the weights'
    /// 16-bit type (<see cref="Gemv"/>'s narrow) instead of float32: where both products run on tensor cores (2 to
    /// <see cref="MaxGemvRows"/> rows) over weights of one type, which round every activation to that type anyway, so the
    /// results are the same bits and the down product reads half the activation bytes. On by default; benchmarks compare both.
    /// </summary>
    public bool UsesNarrowFfn(DeviceWeightType gateUp, int hidden, DeviceWeightType down, int ffn, int n) =>
        NarrowFfnActivations && n <= MaxGemvRows && gateUp == down && UsesTensorCoreGemv(gateUp, hidden, n) && UsesTensorCoreGemv(down, ffn, n);

    /// <summary>See <see cref="UsesNarrowFfn"/>. Takes effect at the next capture of a decode graph.</summary>
    public bool NarrowFfnActivations { get; set; } = true;

    /// <summary>Whether <paramref name="n"/> rows of a product of <paramref name="cols"/> columns go through the tensor-core kernel.</summary>
    internal bool UsesTensorCoreGemv(DeviceWeightType type, int cols, int n) =>
        n > 1 && UseTensorCoreGemv && type != DeviceWeightType.F32 && cols % TensorCoreGemvColumns == 0;

    /// <summary>
    /// Blocks of the tensor-core kernel at most (null: one wave of the device, the kernel's resident blocks on every
    /// multiprocessor). Checks set a few, so that small matrices take several row tiles a block.
    /// </summary>
    public int? TensorCoreGemvWave { get; set; }

    /// <summary>
    /// Grid of the tensor-core kernel for <paramref name="tiles"/> row tiles (it strides them over its blocks): one block a
    /// tile where they fit a wave, else the fewest blocks of one wave that take equal shares (gate/up's 1792 tiles on an
    /// H100's 396 slots: 359 blocks of 5 or 4), so that no block waits at a wave boundary.
    /// </summary>
    internal int TensorCoreGemvBlocks(CudaFunction f, int tiles)
    {
        int wave = TensorCoreGemvWaveOf(f);
        if (tiles <= wave || wave < 1) return tiles;
        int per = (tiles + wave - 1) / wave;
        return (tiles + per - 1) / per;
    }

    /// <summary>Blocks of 256 threads of <paramref name="f"/> one wave holds (<see cref="TensorCoreGemvWave"/> where set).</summary>
    internal int TensorCoreGemvWaveOf(CudaFunction f) =>
        TensorCoreGemvWave ?? _waves.GetOrAdd(f.Name, _ => f.ActiveBlocksPerMultiprocessor(Threads)) * _device.MultiprocessorCount;

    /// <summary>
    /// Whether the one-row accumulating products split their rows into the fewest parts whose blocks fill whole waves of the
    /// device (the resident blocks of every multiprocessor, from the kernel's occupancy) rather than into parts for ~32 warps
    /// per multiprocessor, which left the down projection a partial second wave. 2-8 rows keep the 32-warp rule (their
    /// registers allow fewer resident blocks, and the wave rule then chose too few parts: the CUDA-core batch-8 down
    /// projection took 219 µs instead of 124). On by default; benchmarks compare both.
    /// </summary>
    public bool WaveSplit { get; set; } = true;

    /// <summary>Parts each row of an accumulating product is split into (atomic adds let several warps share a row).</summary>
    private int AccumulateSplit(CudaFunction f, int warps, int cols, int rows)
    {
        const int warpsPerBlock = Threads / 32;
        int maxSplit = Math.Clamp(cols / (32 * 8), 1, 8); // parts of at least 32 vectors
        if (WaveSplit && rows == 1)
        {
            int wave = _waves.GetOrAdd(f.Name, _ => f.ActiveBlocksPerMultiprocessor(Threads)) * _device.MultiprocessorCount;
            for (int k = 1; k <= maxSplit && wave > 0; k++)
            {
                long blocks = ((long)warps * k + warpsPerBlock - 1) / warpsPerBlock;
                long full = (blocks + wave - 1) / wave * wave;
                if (blocks >= 0.9 * wave && blocks >= 0.9 * full) return k;
            }
        }
        return Math.Clamp((32 * _device.MultiprocessorCount + warps - 1) / warps, 1, maxSplit);
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> _waves = new(StringComparer.Ordinal);

    /// <summary>
    /// The decode QKV product of one row with RoPE and the float16 cache append in its epilogue (gemv.cu, MODE 3):
    /// w is the stacked [(heads + 2·kvHeads)·hd, cols] matrix, x the raw residual stream (the attention norm
    /// <paramref name="norm"/> is fused), rotated queries go to <paramref name="qOut"/> [heads·hd], keys and values into
    /// one sequence's layer of the cache ([kvHeads, capacity, hd] each) at position *<paramref name="position"/>.
    /// Replaces <see cref="Gemv"/> + <see cref="QkvRopeAppend"/> for models without QKV bias or q/k norms.
    /// </summary>
    public void GemvQkvRope(DeviceWeightType type, ulong w, ulong x, ulong norm, float eps, int cols, ulong qOut, ulong kCache, ulong vCache,
        ulong invFreq, int heads, int kvHeads, int headDim, int capacity, ulong position, bool interleaved)
    {
        if (headDim % 2 != 0) throw new ArgumentException($"RoPE needs an even head dimension, not {headDim}", nameof(headDim));
        int rows = (heads + 2 * kvHeads) * headDim, warps = rows / 2; // one rotation pair per warp
        const int warpsPerBlock = Threads / 32;
        _gemv[$"gemv_{Suffix(type)}_qkv_rope_norm_1"].Launch((warps + warpsPerBlock - 1) / warpsPerBlock, Threads, 0, w, x, norm, Arg.Float(eps),
            Arg.Int(rows), Arg.Int(cols), qOut, kCache, vCache, invFreq, position, Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim),
            Arg.Int(capacity), Arg.Int(interleaved ? 1 : 0));
    }

    /// <summary>
    /// How a causal attention splits the sequence: chunk length, chunk count, shared memory per block. With
    /// <paramref name="Streaming"/> (head dimension 64 or 128, ≤ 8 heads per KV head) the streaming kernel computes
    /// the chunk from the position itself, and only the split count is planned. <paramref name="RingBytes"/>: each warp's
    /// staging ring in the paged cache's pipelined kernel (0: the default, CudaPagedKernels.PipelineRingBytes);
    /// <paramref name="Formats"/>: the block formats (a bit per KvFormat) its format-specialized build reads (0: the
    /// generic build, every format); <paramref name="Units"/>: the pipelined kernel's grid blocks of one wave, shared by all
    /// query rows, when planned in waves (its chunk then picked per layer by the kernel, at most Chunk; 0: Splits per row
    /// and KV head); <paramref name="Waves"/>: how many such waves the grid has; <paramref name="Steal"/>: the pipelined
    /// kernel's batch launches let its units claim their blocks from their head's pool (CudaPagedKernels.BlockClaims).
    /// </summary>
    public readonly record struct AttentionPlan(int Chunk, int Splits, int SharedBytes, bool Streaming = false, int RingBytes = 0, int Formats = 0, int Units = 0,
        int Waves = 1, bool Steal = false);

    /// <summary>Whether the streaming decode kernel (attn_hD_gG) covers this head shape.</summary>
    public static bool StreamingAttention(int group, int headDim) => headDim is 64 or 128 && group is >= 1 and <= 8;

    /// <summary>
    /// Whether the streaming kernel issues each warp step's loads before the previous step's arithmetic (attn_hD_gG) or
    /// alternates loading and computing (attn_hD_gG_serial, the earlier kernel). On by default; benchmarks compare both.
    /// </summary>
    public bool PipelinedAttention { get; set; } = true;

    /// <summary>
    /// Fewest keys per chunk the streaming kernel's planner allows (each chunk costs the merge a partial output; fewer keys
    /// per chunk give short contexts more blocks).
    /// </summary>
    public int MinStreamingChunk { get; set; } = 32;

    /// <summary>Most chunks the streaming kernel merges (its shared weights array in attention.cu).</summary>
    public const int MaxStreamingSplits = 128;

    /// <summary>
    /// Chooses the split so that (splits × KV heads × query rows) blocks make one full wave: 2 blocks per multiprocessor
    /// for the streaming kernel (its registers allow about that many; 4 per multiprocessor made a second, partial wave and
    /// ran 15% slower at 128K), 4 for the general one; for up to <paramref name="visible"/> visible tokens. The streaming
    /// kernel keeps at least 128 keys per chunk, since each chunk costs the merge a partial output to read.
    /// </summary>
    public AttentionPlan PlanAttention(int visible, int rows, int heads, int kvHeads, int headDim)
    {
        int group = heads / kvHeads;
        long targetBlocks = 4L * _device.MultiprocessorCount;
        if (StreamingAttention(group, headDim))
        {
            long streamingBlocks = 2L * _device.MultiprocessorCount;
            long want = Math.Max(1, streamingBlocks / ((long)kvHeads * rows));
            int splits = (int)Math.Clamp(want, 1, Math.Min(MaxStreamingSplits, Math.Max(1, (visible + MinStreamingChunk - 1) / MinStreamingChunk)));
            return new AttentionPlan(0, splits, 0, Streaming: true);
        }
        int maxChunk = MaxChunk(group, headDim);
        if (maxChunk < 32) throw new CudaException("attention", $"a group of {group} heads of dimension {headDim} does not fit in shared memory");
        long wantSplits = Math.Max(1, targetBlocks / ((long)kvHeads * rows));
        int chunk = (int)Math.Min(maxChunk, Math.Max(32, (visible + wantSplits - 1) / wantSplits + 31) / 32 * 32);
        int chunks = (visible + chunk - 1) / chunk;
        if (chunks > chunk) // the merge keeps one weight per chunk in the scores area
        {
            chunk = Math.Min(maxChunk, ((int)Math.Ceiling(Math.Sqrt(visible)) + 31) / 32 * 32);
            chunks = (visible + chunk - 1) / chunk;
            if (chunks > chunk) throw new CudaException("attention", $"{visible} tokens need more than {maxChunk} chunks of {maxChunk}");
        }
        return new AttentionPlan(chunk, chunks, SharedBytes(group, headDim, chunk));
    }

    /// <summary>Longest chunk whose scores fit the 48 KB of shared memory a block gets without opting in (less a little static memory).</summary>
    public static int MaxChunk(int group, int headDim) => Math.Min(1024, ((48 * 1024 - 256) / 4 - 2 * group * headDim) / group) / 32 * 32;

    /// <summary>Shared memory of one attention block: queries and output accumulators [group, hd], scores [group, chunk].</summary>
    public static int SharedBytes(int group, int headDim, int chunk) => (2 * group * headDim + group * chunk) * 4;

    /// <summary>
    /// Causal attention of query rows q [rows, heads, hd] at positions *position.. over one layer's cache, in one launch.
    /// partOut [rows·heads·splits·hd] and partMl [rows·heads·splits·2] hold per-chunk results; counters
    /// [rows·kvHeads] must be zero before the first launch (each launch leaves them zero). With
    /// <paramref name="seqStride"/> (elements) non-zero, row t is sequence t of a batch: its cache is t·seqStride further
    /// and its position is position[t]. <paramref name="prefetch"/>: weights the next kernels read, asked of L2 while the
    /// attention runs (default: none).
    /// </summary>
    public void Attention(ulong q, ulong kCache, ulong vCache, ulong output, ulong partOut, ulong partMl, ulong counters,
        int rows, int heads, int kvHeads, int headDim, int capacity, ulong position, AttentionPlan plan, long seqStride = 0, L2Prefetch prefetch = default)
    {
        int group = heads / kvHeads;
        if (!SupportsGroup(group)) throw new CudaException("attention", $"{group} query heads per KV head are not supported (1..8 or 16)");
        float scale = 1f / MathF.Sqrt(headDim);
        var grid = new Dim3((uint)plan.Splits, (uint)kvHeads, (uint)rows);
        if (plan.Streaming)
        {
            if (!StreamingAttention(group, headDim)) throw new CudaException("attention", $"no streaming kernel for {group} heads of dimension {headDim}");
            _attention[$"attn_h{headDim}_g{group}{(PipelinedAttention ? "" : "_serial")}"].Launch(grid, 128, 0, q, kCache, vCache, partOut, partMl, counters, output,
                Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(capacity), position, Arg.Int(plan.Splits), Arg.Float(scale), Arg.Long(seqStride),
                prefetch.First, Arg.Long(prefetch.FirstBytes), prefetch.Second, Arg.Long(prefetch.SecondBytes));
            return;
        }
        _attention[$"attn_g{group}"].Launch(grid, 128, plan.SharedBytes,
            q, kCache, vCache, partOut, partMl, counters, output, Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim), Arg.Int(capacity), position,
            Arg.Int(plan.Chunk), Arg.Int(plan.Splits), Arg.Float(scale), Arg.Long(seqStride),
            prefetch.First, Arg.Long(prefetch.FirstBytes), prefetch.Second, Arg.Long(prefetch.SecondBytes));
    }

    /// <summary>Whether the tensor-core prefill kernel (flash_hD) covers this head dimension.</summary>
    public static bool FlashAttention(int headDim) => headDim is 64 or 128;

    /// <summary>
    /// Causal prefill attention on tensor cores: rows q [n, heads, hd] at positions *position.. of one sequence over
    /// its cache (which already holds their keys and values), into output [n, heads, hd].
    /// </summary>
    public void FlashPrefill(ulong q, ulong kCache, ulong vCache, ulong output, int n, int heads, int kvHeads, int headDim, int capacity, ulong position)
    {
        if (!FlashAttention(headDim)) throw new CudaException("attention", $"no tensor-core prefill kernel for head dimension {headDim}");
        var f = _attention[$"flash_h{headDim}"];
        int shared = 4 * FlashKeys * (headDim + 8) * 2; // K and V tiles, two stages, rows padded by 16 bytes
        lock (_flashShared)
            if (_flashShared.Add(headDim)) f.AllowSharedMemory(shared);
        f.Launch(new Dim3((uint)((n + FlashQueries - 1) / FlashQueries), (uint)heads), 128, shared,
            q, kCache, vCache, output, Arg.Int(n), Arg.Int(heads), Arg.Int(heads / kvHeads), Arg.Int(capacity), position, Arg.Float(1f / MathF.Sqrt(headDim)));
    }

    private const int FlashQueries = 64, FlashKeys = 64; // FLASH_BQ, FLASH_BK in attention.cu
    private readonly HashSet<int> _flashShared = [];

    public void Dispose()
    {
        _elementwise.Dispose();
        _gemv.Dispose();
        _attention.Dispose();
    }
}
