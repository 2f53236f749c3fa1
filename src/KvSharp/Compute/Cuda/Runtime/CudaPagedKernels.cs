using KvSharp.Cache.Blocks;
using KvSharp.Compute.Cuda.Model;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>
/// Typed launchers of the paged KV cache's kernels (paged_attention.cu, paged_cache.cu), compiled for the device
/// on first use and shared by every paged cache of that device. Every method only queues work on the stream.
/// </summary>
internal sealed partial class CudaPagedKernels
{
    private static readonly Dictionary<CudaDevice, CudaPagedKernels> PerDevice = new();
    private readonly CudaDevice _device;
    private readonly CudaModule _cache;
    private readonly Lazy<CudaModule> _attention, _tensorAttention, _merge;

    private CudaPagedKernels(CudaDevice device)
    {
        _device = device;
        // The CUDA-core kernels compiled on first use like the tensor-core ones: NVRTC takes ~2 minutes over this file, which
        // caches read by the tensor-core kernels (head dimension 128, the default) never launch.
        _attention = new Lazy<CudaModule>(() => CudaModule.LoadEmbedded(device, "paged_attention.cu"));
        // The decode step's append and tensor-core attention wait for their predecessor with griddepcontrol.wait, so they
        // may launch programmatically (ProgrammaticLaunch).
        _cache = CudaModule.LoadEmbedded(device, "paged_cache.cu", IsProgrammatic);
        // Compiled on first use: caches of other shapes never need it.
        _tensorAttention = new Lazy<CudaModule>(() => CudaModule.LoadEmbedded(device, "paged_attention_tc.cu", IsProgrammatic));
        _merge = new Lazy<CudaModule>(() => CudaModule.LoadEmbedded(device, "paged_merge.cu", IsProgrammatic));
    }

    private bool IsProgrammatic(string name) => ProgrammaticLaunch && (name == "paged_rope_append" || name == "paged_rope_append_split" || name.StartsWith("paged_attn_", StringComparison.Ordinal)
        || name.StartsWith("paged_qkv_rope_append_", StringComparison.Ordinal) || name.StartsWith("paged_project_encode_", StringComparison.Ordinal)
        || name == "paged_merge_heads");

    /// <summary>
    /// Whether the decode step's paged kernels (the RoPE + append and the tensor-core attention kernels) launch with
    /// programmatic dependent launch under <see cref="CudaDevice.ProgrammaticMatrixVector"/>: their grids become resident
    /// while the previous kernel drains (they wait for it with griddepcontrol.wait before reading anything it writes), and
    /// the attention lets the output product start its weight loads during its merge. On by default; a benchmark
    /// compares both (applies to launches queued, and graphs captured, after the change).
    /// </summary>
    public bool ProgrammaticLaunch
    {
        get => _programmatic;
        set
        {
            _programmatic = value;
            foreach (var f in _launched) f.WorksBeforeWait = IsProgrammatic(f.Name);
        }
    }

    private bool _programmatic = true;
    private readonly HashSet<CudaFunction> _launched = [];

    /// <summary>A decode kernel, remembered so that <see cref="ProgrammaticLaunch"/> reaches it.</summary>
    private CudaFunction Decode(CudaFunction f)
    {
        lock (_launched) _launched.Add(f);
        return f;
    }

    /// <summary>The kernels of <paramref name="device"/> (compiled and loaded once per process; unloaded with the context).</summary>
    public static CudaPagedKernels For(CudaDevice device)
    {
        lock (PerDevice)
        {
            if (!PerDevice.TryGetValue(device, out var k)) PerDevice[device] = k = new CudaPagedKernels(device);
            return k;
        }
    }

    /// <summary>
    /// Whether a pipelined launch of one query row (a batch-1 decode step) leaves its heads' merge to
    /// <c>paged_merge_heads</c> (paged_merge.cu), launched after it (a block per query head), instead of the last unit of
    /// each KV head merging alone (default: on). Batch launches always merge in the kernel: a grid of its own was slower
    /// there (docs/benchmarks.md, stop 26).
    /// </summary>
    public bool HeadMergeGrid { get; set; } = true;

    /// <summary>
    /// Whether a pipelined batch launch whose caller vouches that the kernel before it is the batch QKV product with the
    /// append folded in (<see cref="Attention"/>'s tablesEarly; <see cref="FuseBatchAppend"/>) reads the split and its
    /// descriptors before its griddepcontrol.wait, during that product's tail, and only the head's token count and its last
    /// descriptor after it (default: on). That product writes no block count and no descriptor but the residual's count.
    /// Applies to launches queued, and graphs captured, after the change; bench-paged --early-tables compares.
    /// </summary>
    public bool EarlyBatchTables { get; set; } = true;

    private long _earlyTablesLaunches;

    /// <summary>Pipelined launches queued with their tables read before the wait (<see cref="EarlyBatchTables"/>; graph captures included): the checks' evidence.</summary>
    internal long EarlyTablesLaunches => Interlocked.Read(ref _earlyTablesLaunches);

    /// <summary>
    /// When the pipelined kernel's batch launches (one query row a sequence, heads merged in the kernel) let each warp
    /// claim its blocks from its head's pool (all but the head's last block, four at a time, an atomic add on the head's
    /// counter) instead of reading a fixed run of them, through a build of its own (PIPE_STEAL): a head's units then end
    /// together, where units of equal runs ended up to 17 µs apart on one SM and whole groups of SMs 20-25 µs early
    /// (paged_attention_tc.cu, STEAL; stop 30's timelines). Default <see cref="PipelinedBlockClaims.Measured"/>
    /// (<see cref="ClaimsPay"/>). Applies to plans made after the change.
    /// </summary>
    public PipelinedBlockClaims BlockClaims { get; set; } = PipelinedBlockClaims.Measured;

    /// <summary>
    /// Where block claims measured faster than fixed runs (stop 31, H100, two or three runs each): one wave of units over
    /// caches of INT4 blocks alone (the float32 residual aside) whose layer gives each unit
    /// <see cref="ClaimsMinBlocksPerUnit"/> blocks or more on average. KIVI-4 took 3.3% off a step at 8 × 32K (~124 blocks
    /// a unit), 0.9% at 8 × 16K and 0.6% at 4 × 32K (~62), and cost 1.0% at 8 × 8K (~31) and 1.2% at 8 × 128K (two waves,
    /// ~248); KVzip 0.3 + INT4 lost 1.6% at 8 × 32K (~37 a unit, where the first claim's round trip weighs on a launch of
    /// ~46 µs) and 3.8% at 8 × 128K (two waves), KIVI-2 (instruction-bound: a claim's bookkeeping is a block's cost) 6.4%,
    /// KVzip 0.3 F16 1.2% at 8 × 32K; F16 and FP8 were unchanged (±0.07%).
    /// </summary>
    /// <param name="formats">The cache's block formats, a bit per <see cref="KvFormat"/>.</param>
    /// <param name="blocksPerUnit">The launch's blocks over its units (grid blocks).</param>
    /// <param name="waves">The launch's waves of resident units (<see cref="WaveUnits"/>).</param>
    public static bool ClaimsPay(int formats, double blocksPerUnit, int waves) =>
        (formats & ~(1 << (int)KvFormat.F32)) == 1 << (int)KvFormat.Int4 && waves == 1 && blocksPerUnit >= ClaimsMinBlocksPerUnit;

    /// <summary>
    /// The blocks a unit reads on average from which <see cref="ClaimsPay"/> takes claims for INT4 caches: between the
    /// measured loss at ~31 and the gains at ~62.
    /// </summary>
    public const int ClaimsMinBlocksPerUnit = 56;

    /// <summary>
    /// Descriptors' room (blocks of the plan's chunk) that block claiming needs in shared memory: paged_attention_tc.cu's
    /// STEAL_ROOM (8 pieces + 4 warps × (16 + 4) + 2 for the shared state) less the <see cref="MaxExtraPieces"/> every plan has.
    /// </summary>
    private const int StealRoomBlocks = 8 + 4 * (16 + 4) + 2 - MaxExtraPieces;

    /// <summary>Splits a warp of <c>paged_merge_heads</c> loads in one round (its ROUND), and its warps at most (its 16-warp arrays).</summary>
    private const int MergeSplitsPerWarp = 8, MergeMaxWarps = 16;

    /// <summary>
    /// Whether a batch-1 head merge (<see cref="HeadMergeGrid"/>) given an <see cref="OutputProjection"/> of bfloat16 or
    /// float16 weights also multiplies the merged heads into it, in the same blocks (<c>paged_merge_project_*</c>,
    /// paged_merge.cu), so that the output product is not a kernel of its own after the merge (default: on). Every batch-1
    /// paged step of the Llama-3.1-8B shape measured 0.3-1.0% faster on an H100 (docs/benchmarks.md, stop 27).
    /// </summary>
    public bool MergeProjection { get; set; } = true;

    /// <summary>Threads of <c>paged_merge_project_*</c>'s blocks, and its resident blocks a multiprocessor (its __launch_bounds__).</summary>
    private const int MergeProjectionThreads = 256, MergeProjectionBlocksPerSm = 2;

    /// <summary>
    /// The output product a batch-1 head merge may fold in (<see cref="MergeProjection"/>): <paramref name="Residual"/>
    /// [<paramref name="Rows"/>] += <paramref name="Weights"/> [<paramref name="Rows"/>, heads · head dimension] · attention.
    /// </summary>
    public readonly record struct OutputProjection(ulong Weights, DeviceWeightType Type, int Rows, ulong Residual);

    /// <summary>
    /// Threads of the paged attention's, eviction's and re-quantization's blocks (the append's: <see cref="AppendThreads"/>;
    /// the fused QKV product with the append and the press kernels run 256).
    /// </summary>
    public const int Threads = 128;

    /// <summary>
    /// Threads of <c>paged_rope_append</c>'s blocks: a block whose residual fills encodes it, and that encode's passes are
    /// latency-bound, so twice the threads nearly halve them. At batch 8 over a KVzip 0.3 + INT4 cache (some head's residual
    /// fills in most layers of a step) the append with an encode took 36 µs at 128 threads and 28 at 256 (22-23 since its
    /// INT passes are unrolled), and the step 3.1% less (H100, docs/benchmarks.md); the other caches' steps moved ≤ 0.4%
    /// (KIVI-4 0.2-0.4% slower: the append without an encode takes 7 µs instead of 5.5).
    /// </summary>
    public const int AppendThreads = 256;

    /// <summary>
    /// Whether attention has a kernel for <paramref name="group"/> query heads per KV head and head dimension
    /// <paramref name="headDim"/>: groups 1, 2, 4 and 8 on every kernel, 3 (6 query heads over 2 KV heads, as our needle
    /// model) on the CUDA-core ones (lane channels, wide, VidKV).
    /// </summary>
    public static bool Supports(int group, int headDim) => group is 1 or 2 or 3 or 4 or 8 && headDim is 64 or 128;

    /// <summary>Whether value blocks of <paramref name="valueGroup"/> channels per group can be read (a lane's value channels stay in one group).</summary>
    public static bool SupportsValueGroup(int valueGroup) => valueGroup % 16 == 0;

    /// <summary>
    /// Whether the tensor-core kernel reads this shape: head dimension 128 (its fragments cover 128 channels) and value
    /// groups of 32, 64 or 128 channels (each 32-channel chunk of its value fragments lies in one group).
    /// </summary>
    public static bool SupportsTensorCores(int group, int headDim, int valueGroup) =>
        group is 1 or 2 or 4 or 8 && headDim == 128 && valueGroup is 32 or 64 or 128;

    /// <summary>Longest split (in blocks of <paramref name="blockTokens"/>) whose scores fit 48 KB of shared memory.</summary>
    public static int MaxChunkBlocks(int group, int headDim, int blockTokens, PagedAttentionKernel kernel)
    {
        if (kernel == PagedAttentionKernel.Pipelined) return PipelinedMaxChunkBlocks;
        int floats = (48 * 1024 - 512) / 4 - group * headDim - ExtraFloats(group, headDim, blockTokens, kernel);
        return Math.Max(0, (floats - 1) / (group * blockTokens + 1 + FloatsPerBlock(kernel)));
    }

    /// <summary>
    /// Shared memory of one attention block: value accumulators [group, hd], block offsets, scores [group, chunk]; the wide
    /// kernel adds the queries [hd, group] and each of its 4 warps' folded queries, padded by 4 floats every 8 channels;
    /// the tensor-core kernel a copy of the split's block descriptors; the VidKV kernel each warp's folded and transformed
    /// queries [group, hd + blockTokens].
    /// </summary>
    public static int SharedBytes(int group, int headDim, int blockTokens, int chunkBlocks, PagedAttentionKernel kernel) =>
        kernel == PagedAttentionKernel.Pipelined ? PipelinedSharedBytes(group, chunkBlocks) : (ExtraFloats(group, headDim, blockTokens, kernel) + group * headDim + chunkBlocks * (1 + FloatsPerBlock(kernel)) + 1 + group * chunkBlocks * blockTokens) * 4;

    private static int ExtraFloats(int group, int headDim, int blockTokens, PagedAttentionKernel kernel) => kernel switch
    {
        PagedAttentionKernel.Wide => 5 * (group * headDim + headDim / 2),
        PagedAttentionKernel.VidKv => 4 * group * (headDim + blockTokens),
        _ => 0,
    };

    private static int FloatsPerBlock(PagedAttentionKernel kernel) => kernel == PagedAttentionKernel.TensorCores ? 4 : 0;

    /// <summary>Attention blocks of the tensor-core kernel resident per multiprocessor (its register bound, paged_attention_tc.cu).</summary>
    private const int TensorBlocksPerSm = 3;

    /// <summary>
    /// Longest split of the pipelined kernel, in blocks (its descriptors are copied to shared memory, 16 bytes each, at most
    /// two by each of its 128 threads).
    /// </summary>
    public const int PipelinedMaxChunkBlocks = 256;

    /// <summary>
    /// Bytes of each warp's staging ring in the pipelined kernel (its `ring` argument, paged_attention_tc.cu) by default: two
    /// blocks of up to 8 KB (an F16 block of 32 tokens), with 3 attention blocks per multiprocessor.
    /// </summary>
    public const int PipelineRingBytes = 16 * 1024;

    /// <summary>
    /// The ring of caches whose blocks are all of at most 4 bits (or float32: the residual, staged when it fits half a ring,
    /// else read in place; see <see cref="FitsSmallRing"/>): a 32-token INT4 block pair is 2 × 2.5 KB, so 8 KB still holds
    /// a block and a half per warp, and 4 attention blocks fit a multiprocessor (their register bound) instead of 3.
    /// </summary>
    public const int PipelineSmallRingBytes = 8 * 1024;

    /// <summary>
    /// Whether blocks of <paramref name="format"/> may go through <see cref="PipelineSmallRingBytes"/> rings: every staged
    /// block must fit half a ring (an empty ring then always takes it); ≤ 4-bit blocks of ≤ 32 tokens do, and float32 ones
    /// are staged only when their visible rows fit.
    /// </summary>
    public static bool FitsSmallRing(KvFormat format) =>
        format == KvFormat.F32 || !format.IsVidKv() && format.BitsPerElement() <= 4;

    /// <summary>
    /// Whether the pipelined tensor-core kernel reads this shape: the tensor-core kernel's, with blocks of at most 32 tokens
    /// (every staged block fits half a ring; one block's scores fit a warp's registers).
    /// </summary>
    public static bool SupportsPipelined(int group, int headDim, int valueGroup, int blockTokens) =>
        SupportsTensorCores(group, headDim, valueGroup) && blockTokens <= 32;

    /// <summary>
    /// Shared memory of one block of the pipelined kernel: 4 warps' rings of <paramref name="ringBytes"/> (after the block
    /// loop also the warps' output slices [4, group, 128] and the merge's weights), their 8 barriers each, the padded hi/lo
    /// query copy [group, 164 words], the warps' (max, sum) per head and the split's descriptors.
    /// </summary>
    public static int PipelinedSharedBytes(int group, int chunkBlocks, int ringBytes = PipelineRingBytes) =>
        4 * ringBytes + 4 * 8 * 8 + 4 * (group * 164 + 8 * group) + 16 * (chunkBlocks + MaxExtraPieces);

    /// <summary>
    /// Descriptors a split's last block may add when its float32 rows are staged in pieces of a quarter of a ring (a 32-row
    /// F32 block in 8 KB rings: 8 pieces; paged_attention_tc.cu, <c>pipe_float_pieces</c>).
    /// </summary>
    private const int MaxExtraPieces = 7;

    /// <summary>
    /// Whether caches launch format-specialized builds of the pipelined kernel (see <see cref="Pipelined"/>): on unless
    /// <c>$KVSHARP_CUDA_SPECIALIZED=0</c>, which keeps the generic build (every format in one kernel) for comparison. They
    /// were opt-in from stop 15 to stop 18 because three benchmark calls with them faulted with an illegal address; that
    /// fault was the fused append's race (its last block, fixed by a barrier in stop 17, docs/cuda.md), not these builds.
    /// </summary>
    public static bool SpecializedPipelined { get; } = Environment.GetEnvironmentVariable("KVSHARP_CUDA_SPECIALIZED") != "0";

    private readonly HashSet<CudaFunction> _pipelinedShared = [];
    private readonly Dictionary<(int Group, int ValueGroup, int Formats, bool Steal), CudaModule> _pipelinedBuilds = [];

    /// <summary>The formats a cache's blocks may have for the small rings (<see cref="FitsSmallRing"/>), a bit per <see cref="KvFormat"/>.</summary>
    public static readonly int SmallRingFormats = Enum.GetValues<KvFormat>().Where(FitsSmallRing).Aggregate(0, (m, f) => m | 1 << (int)f);

    /// <summary>Whether a cache holding blocks of <paramref name="formats"/> (a bit per <see cref="KvFormat"/>) uses the small rings.</summary>
    public static bool UsesSmallRings(int formats) => formats != 0 && (formats & ~SmallRingFormats) == 0;

    /// <summary>
    /// The defines of paged_attention_tc.cu's format-specialized build for <paramref name="group"/> query heads per KV
    /// head, value groups of <paramref name="valueGroup"/> channels and blocks of <paramref name="formats"/> (a bit per
    /// <see cref="KvFormat"/>): what <see cref="Pipelined"/> compiles, and what <c>KvSharp.GpuTests compile
    /// pipelined:...</c> fills the disk cache with ahead of a run.
    /// </summary>
    internal static string[] PipelinedDefines(int group, int valueGroup, int formats, bool steal = false) =>
        ["PIPE_ONLY", $"PIPE_G={group}", $"PIPE_VG={valueGroup}", $"PIPE_FORMATS={formats}", $"PIPE_MIN_BLOCKS={(UsesSmallRings(formats) ? 4 : 3)}",
            .. steal ? ["PIPE_STEAL"] : Array.Empty<string>()];

    /// <summary>
    /// The pipelined kernel for blocks of <paramref name="formats"/> (a bit per <see cref="KvFormat"/>; 0: every format).
    /// With <see cref="SpecializedPipelined"/>, a cache gets a build of paged_attention_tc.cu with only this group's and
    /// value group's kernel, whose format switch keeps only its formats (a fraction of the generic kernel's code, which
    /// missed the instruction cache) and whose register bound is what its shared memory admits: 3 blocks per multiprocessor
    /// with 16 KB rings (F16, FP8, INT8 blocks: 145 registers for F16 blocks, where the generic bound of 4 blocks spilled),
    /// 4 with the 8 KB rings of small blocks (a bound of 5 blocks, 96 registers, spilled and was 6-9% slower). Every
    /// compressed row of the H100 benchmark decodes 0.5-2.1% faster a step than over the generic build, and every GPU
    /// self-check passes over them (stop 19, docs/benchmarks.md). Compiled on first use (~3 s on an H200) and cached on
    /// disk. The generic build otherwise (<see cref="SpecializedPipelined"/> off).
    /// </summary>
    private CudaFunction Pipelined(int group, int valueGroup, int formats, bool steal = false)
    {
        CudaFunction f;
        if (formats == 0 || !SpecializedPipelined) f = _tensorAttention.Value[$"paged_attn_p_g{group}_v{valueGroup}"];
        else
        {
            CudaModule? module;
            lock (_pipelinedBuilds)
                if (!_pipelinedBuilds.TryGetValue((group, valueGroup, formats, steal), out module))
                {
                    module = CudaModule.LoadEmbedded(_device, "paged_attention_tc.cu", IsProgrammatic, PipelinedDefines(group, valueGroup, formats, steal));
                    _pipelinedBuilds[(group, valueGroup, formats, steal)] = module;
                }
            f = module[$"paged_attn_p_g{group}_v{valueGroup}"];
        }
        lock (_pipelinedShared)
            if (_pipelinedShared.Add(f))
            {
                f.AllowSharedMemory(PipelinedSharedBytes(group, PipelinedMaxChunkBlocks));
                f.PreferSharedMemory();
            }
        return f;
    }

    /// <summary>
    /// The pipelined kernel's plan: rings of <see cref="PipelineSmallRingBytes"/> for a cache of small blocks
    /// (<see cref="UsesSmallRings"/> of <paramref name="formats"/>), else <see cref="PipelineRingBytes"/>; one wave of grid
    /// blocks (the blocks resident per multiprocessor with those rings × multiprocessors) shared by every row, or whole
    /// waves of them (<see cref="WaveUnits"/>), whose units the kernel hands to the layer's (row, head) pairs with a chunk
    /// it picks per layer from their block counts (paged_attention_tc.cu, <c>wave_split</c>).
    /// </summary>
    private CudaKernels.AttentionPlan PlanPipelined(int blocks, long layerBlocks, int rows, int group, int kvHeads, int formats, int valueGroup)
    {
        int ring = UsesSmallRings(formats) ? PipelineSmallRingBytes : PipelineRingBytes;
        int perSm = Math.Max(1, Pipelined(group, valueGroup, formats).ActiveBlocksPerMultiprocessor(Threads, PipelinedSharedBytes(group, PipelinedMaxChunkBlocks, ring)));
        int wave = perSm * _device.MultiprocessorCount;
        var (units, splits, chunk) = WaveUnits(blocks, wave, rows, kvHeads);
        if (group * splits > ring)
            throw new CudaException("paged attention", $"{splits} splits of {group} heads do not fit the merge's weights in the rings");
        // Claims count in the high 16 bits of a head's counter: the head's blocks plus every warp's last claim past them.
        bool steal = SpecializedPipelined && formats != 0 && rows > 1 && blocks + 4L * splits * 8 < 1 << 15 && BlockClaims switch
        {
            PipelinedBlockClaims.Always => true,
            PipelinedBlockClaims.Measured => ClaimsPay(formats, (double)Math.Max(1, layerBlocks) * rows / units, units / wave),
            _ => false,
        };
        var plan = new CudaKernels.AttentionPlan(chunk, splits, PipelinedSharedBytes(group, chunk, ring), RingBytes: ring, Formats: formats,
            Units: wave, Waves: units / wave);
        return steal ? WithBlockClaims(plan, group) : plan;
    }

    /// <summary>
    /// <paramref name="plan"/> (a pipelined one) with block claims (<see cref="BlockClaims"/>) in its batch launches: the
    /// flag, and shared memory for the claims' descriptors' room where its chunk's is smaller.
    /// </summary>
    public static CudaKernels.AttentionPlan WithBlockClaims(CudaKernels.AttentionPlan plan, int group) => plan with
    {
        Steal = true,
        SharedBytes = Math.Max(plan.SharedBytes, ClaimsSharedBytes(group, plan.Chunk, plan.RingBytes > 0 ? plan.RingBytes : PipelineRingBytes)),
    };

    /// <summary>Shared memory of a pipelined launch of <paramref name="chunk"/>-block splits with the claims' descriptors' room.</summary>
    private static int ClaimsSharedBytes(int group, int chunk, int ring) => PipelinedSharedBytes(group, Math.Max(chunk, StealRoomBlocks), ring);

    /// <summary>
    /// The pipelined kernel's grid for <paramref name="rows"/> rows of <paramref name="kvHeads"/> heads of at most
    /// <paramref name="blocks"/> blocks: Units, whole <paramref name="wave"/>s of grid blocks shared by all rows (one, unless
    /// the pairs of row and head outnumber it or the descriptors' room needs more); Splits, the partial results' stride
    /// per head (Units / rows); Chunk, the most blocks per split the kernel may pick (its descriptors' room). The kernel's
    /// chunk is at most the smaller of ceil(longest / (Units / pairs)) and ceil(Σ blocks / (Units − pairs)) and at least
    /// ceil(longest / Splits), so the room is the largest of those over layers of heads up to <paramref name="blocks"/>.
    /// Where that is more than <see cref="PipelinedMaxChunkBlocks"/>, the units grow (whole waves) until that many blocks
    /// per split fit (at 8 × 128K tokens).
    /// </summary>
    public static (int Units, int Splits, int Chunk) WaveUnits(long blocks, long wave, int rows, int kvHeads)
    {
        blocks = Math.Max(1, blocks);
        wave = Math.Max(1, wave);
        rows = Math.Max(1, rows);
        long pairs = (long)rows * kvHeads;
        long units = Waves(pairs);
        long room = Room(units);
        if (room > PipelinedMaxChunkBlocks)
        {
            units = Math.Max(units, Waves(pairs * ((blocks + PipelinedMaxChunkBlocks - 1) / PipelinedMaxChunkBlocks)));
            room = Math.Min(PipelinedMaxChunkBlocks, Room(units));
        }
        return ((int)units, (int)(units / rows), (int)Math.Max(1, room));

        long Waves(long least) => Math.Max(1, (least + wave - 1) / wave) * wave;

        long Room(long u)
        {
            long perPair = u / pairs, splits = u / rows;
            long fit = (blocks + perPair - 1) / perPair;
            if (u > pairs) fit = Math.Min(fit, (pairs * blocks + u - pairs - 1) / (u - pairs));
            return Math.Max(fit, (blocks + splits - 1) / splits);
        }
    }

    /// <summary>
    /// Blocks per split such that one layer's non-empty grid blocks (per row: Σ over KV heads of ceil(head blocks / chunk))
    /// fit <paramref name="wave"/> resident blocks: a grid one block larger than a wave runs that block in a second wave and
    /// takes twice as long (at 128K tokens, 8 KV heads and 396 resident blocks, layerBlocks / wave rounded up gave 8 × 50 = 400).
    /// The smaller of two chunks that both fit: layerBlocks / (wave − kvHeads) (the grid is at most layerBlocks / chunk +
    /// kvHeads; best for heads of unequal lengths, as after KVzip), and the longest head over wave / kvHeads splits (every
    /// head then has at most that many; best for heads of one length: at batch 8 and 32K tokens, 66 resident blocks a
    /// sequence, it gives 129 blocks a split instead of 142, the longest grid block's work 9% shorter).
    /// </summary>
    public static long OneWaveChunk(long blocks, long layerBlocks, long wave, int kvHeads)
    {
        long room = Math.Max(1, wave - kvHeads);
        long bySum = Math.Max(1, (Math.Max(blocks, layerBlocks) + room - 1) / room);
        long perHead = wave / Math.Max(1, kvHeads);
        long byLongest = perHead > 0 ? Math.Max(1, (blocks + perHead - 1) / perHead) : long.MaxValue;
        return Math.Min(bySum, byLongest);
    }

    /// <summary>
    /// Splits up to <paramref name="blocks"/> blocks per head (the longest) into chunks. The CUDA-core kernels aim at
    /// (splits × KV heads × rows) grid blocks filling the GPU a few times over; the tensor-core one sizes the chunk so that
    /// the non-empty grid blocks, <paramref name="layerBlocks"/> (one layer's blocks over all its KV heads) / chunk per row,
    /// fill exactly one wave of resident blocks: no tail wave, fewer chunks for the merge, and heads shorter than the longest
    /// (KVzip) leave no SM idle. The plan's Chunk counts blocks per split. <paramref name="formats"/>: the formats of the
    /// cache's blocks, a bit per <see cref="KvFormat"/> (0: unknown), which pick the pipelined kernel's build and its rings
    /// (small when every format fits them, <see cref="UsesSmallRings"/>); <paramref name="valueGroup"/>: the cache's value group.
    /// </summary>
    public CudaKernels.AttentionPlan Plan(int blocks, long layerBlocks, int rows, int group, int kvHeads, int headDim, int blockTokens, PagedAttentionKernel kernel,
        int formats = 0, int valueGroup = 32)
    {
        int maxChunk = MaxChunkBlocks(group, headDim, blockTokens, kernel);
        if (maxChunk < 1) throw new CudaException("paged attention", $"a block of {blockTokens} tokens for {group} heads does not fit in shared memory");
        blocks = Math.Max(1, blocks);
        if (kernel == PagedAttentionKernel.Pipelined) return PlanPipelined(blocks, layerBlocks, rows, group, kvHeads, formats, valueGroup);
        long wantSplits = Math.Max(1, (kernel == PagedAttentionKernel.LaneChannels ? 4L : 8L) * _device.MultiprocessorCount / ((long)kvHeads * rows));
        long perChunk = kernel == PagedAttentionKernel.TensorCores
            ? OneWaveChunk(blocks, layerBlocks, (long)TensorBlocksPerSm * _device.MultiprocessorCount / rows, kvHeads)
            : (blocks + wantSplits - 1) / wantSplits;
        int chunk = (int)Math.Clamp(perChunk, 1, maxChunk);
        int splits = (blocks + chunk - 1) / chunk;
        if (splits > chunk * blockTokens) // the merge keeps one weight per split in the scores area
        {
            chunk = Math.Min(maxChunk, (int)Math.Ceiling(Math.Sqrt((double)blocks / blockTokens)) + 1);
            splits = (blocks + chunk - 1) / chunk;
            if (splits > chunk * blockTokens) throw new CudaException("paged attention", $"{blocks} blocks need more than {maxChunk * blockTokens} splits");
        }
        return new CudaKernels.AttentionPlan(chunk, splits, SharedBytes(group, headDim, blockTokens, chunk, kernel));
    }

    /// <summary>
    /// Attention of query rows q [rows, heads, hd] over one layer's heads (tables pre-offset to the layer): row t sees all
    /// but the last rows-1-t stored tokens of each head; with <paramref name="batch"/>, row t is sequence t, reading the
    /// kvHeads heads at t · kvHeads in the tables (laid out [sequence, KV head]) with all their tokens.
    /// partOut/partMl/counters as <see cref="CudaKernels.Attention"/>. <paramref name="kernel"/> picks the kernel (see
    /// <see cref="PagedAttentionKernel"/>); the VidKV kernel also takes the cache's VidKV parameters (<see cref="VidKvTables"/>;
    /// default: none, for a cache without VidKV blocks). <paramref name="prefetch"/>: weights the next kernels read, asked of L2
    /// while the attention runs (default: none; the VidKV kernel takes none). <paramref name="projection"/>: the output product
    /// after the attention, which a batch-1 pipelined launch folds into its head merge where it can (<see cref="MergeProjection"/>);
    /// true when it did (the residual then holds the product and the output the attention), false when the caller multiplies.
    /// <paramref name="tablesEarly"/>: the caller's word that the kernel queued just before this one is the batch QKV product
    /// with the append folded in (<see cref="EarlyBatchTables"/>).
    /// </summary>
    public bool Attention(ulong q, ulong pool, ulong desc, ulong headBlocks, ulong headTokens, ulong output, ulong partOut, ulong partMl,
        ulong counters, int rows, int heads, int kvHeads, int headDim, int maxBlocks, int blockTokens, int valueGroup, CudaKernels.AttentionPlan plan,
        PagedAttentionKernel kernel, bool batch = false, VidKvTables vid = default, L2Prefetch prefetch = default, OutputProjection projection = default,
        bool tablesEarly = false)
    {
        int group = heads / kvHeads;
        if (!Supports(group, headDim)) throw new CudaException("paged attention", $"{group} query heads per KV head of dimension {headDim} are not supported (groups 1, 2, 3, 4, 8; dimensions 64, 128)");
        if (kernel is PagedAttentionKernel.TensorCores or PagedAttentionKernel.Pipelined && !SupportsTensorCores(group, headDim, valueGroup))
            throw new CudaException("paged attention", $"the tensor-core kernel needs head dimension 128 and value groups of 32, 64 or 128 channels, not {headDim} and {valueGroup}");
        if (kernel == PagedAttentionKernel.Pipelined)
        {
            if (!SupportsPipelined(group, headDim, valueGroup, blockTokens))
                throw new CudaException("paged attention", $"the pipelined kernel needs blocks of at most 32 tokens, not {blockTokens}");
            int ring = plan.RingBytes > 0 ? plan.RingBytes : PipelineRingBytes;
            if (ring is not (PipelineRingBytes or PipelineSmallRingBytes) || plan.Chunk > PipelinedMaxChunkBlocks || plan.SharedBytes < PipelinedSharedBytes(group, plan.Chunk, ring))
                throw new CudaException("paged attention", $"a plan of {plan.SharedBytes} bytes of shared memory and splits of {plan.Chunk} blocks does not fit rings of {ring} bytes (splits of at most {PipelinedMaxChunkBlocks} blocks)");
            if (group * plan.Splits * 4 > 4 * ring)
                throw new CudaException("paged attention", $"{plan.Splits} splits of {group} heads do not fit the merge's weights in the rings");
            // One unit per grid block, numbered along x, y, then z (wave_split): a planned launch's waves of Units, else Splits
            // per row and KV head.
            bool mergeGrid = HeadMergeGrid && rows == 1;
            // Claims only in batch launches (each row sees all its tokens; the attention statistics read part_ml as a row's
            // prefix of splits, part_ml_lse, which claims break), and only with their descriptors' room (a plan made for a
            // shorter chunk, as the checks' grids of few units, has not): other launches read fixed runs.
            bool steal = plan.Steal && batch && !mergeGrid && plan.SharedBytes >= ClaimsSharedBytes(group, plan.Chunk, ring);
            var grid = plan.Units > 0 ? new Dim3((uint)plan.Units, (uint)Math.Max(1, plan.Waves), 1) : new Dim3((uint)plan.Splits, (uint)kvHeads, (uint)rows);
            // Not in the claiming build, whose claims read the tables after the wait.
            bool early = tablesEarly && batch && EarlyBatchTables && !steal;
            if (early) Interlocked.Increment(ref _earlyTablesLaunches);
            Decode(Pipelined(group, valueGroup, plan.Formats, steal)).Launch(grid, Threads, plan.SharedBytes,
                q, pool, desc, headBlocks, headTokens, partOut, partMl, counters, output, Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(maxBlocks),
                Arg.Int(blockTokens), Arg.Int(rows), Arg.Int(plan.Chunk), Arg.Int(plan.Splits), Arg.Float(1f / MathF.Sqrt(headDim)),
                Arg.Int(batch ? 1 : 0), Arg.Int(ring), prefetch.First, Arg.Long(prefetch.FirstBytes), prefetch.Second, Arg.Long(prefetch.SecondBytes),
                Arg.Int(mergeGrid ? 1 : 0), Arg.Int(early ? 1 : 0));
            if (!mergeGrid) return false;
            // The heads' merge folded into the output product: a block of 8 warps per query head and part of the rows,
            // parts filling one wave of two blocks a multiprocessor.
            if (MergeProjection && projection.Weights != 0 && projection.Type is DeviceWeightType.BF16 or DeviceWeightType.F16)
            {
                int parts = Math.Max(1, MergeProjectionBlocksPerSm * _device.MultiprocessorCount / heads);
                Decode(_merge.Value[projection.Type == DeviceWeightType.BF16 ? "paged_merge_project_bf16" : "paged_merge_project_f16"]).Launch(
                    new Dim3((uint)heads, (uint)parts, 1), MergeProjectionThreads, 0, projection.Weights, partOut, partMl, counters, output,
                    projection.Residual, Arg.Int(heads), Arg.Int(plan.Splits), Arg.Int(group), Arg.Int(projection.Rows));
                return true;
            }
            // The heads' merge as a grid of its own: a block per query head and row, a warp per MergeSplitsPerWarp splits.
            Decode(_merge.Value["paged_merge_heads"]).Launch(new Dim3((uint)heads, (uint)rows, 1),
                32 * Math.Clamp((plan.Splits + MergeSplitsPerWarp - 1) / MergeSplitsPerWarp, 1, MergeMaxWarps), 0,
                partOut, partMl, counters, output, Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(plan.Splits), Arg.Int(group));
            return false;
        }
        var function = kernel switch
        {
            PagedAttentionKernel.TensorCores => Decode(_tensorAttention.Value[$"paged_attn_t_g{group}"]),
            PagedAttentionKernel.Wide => _attention.Value[$"paged_attn_w_g{group}_c{headDim / 32}"],
            PagedAttentionKernel.VidKv => VidKvAttention[$"paged_attn_vid_g{group}_c{headDim / 32}"],
            _ => _attention.Value[$"paged_attn_g{group}_c{headDim / 32}"],
        };
        if (kernel == PagedAttentionKernel.VidKv)
        {
            function.Launch(new Dim3((uint)plan.Splits, (uint)kvHeads, (uint)rows), Threads, plan.SharedBytes,
                q, pool, desc, headBlocks, headTokens, partOut, partMl, counters, output, Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(maxBlocks),
                Arg.Int(blockTokens), Arg.Int(valueGroup), Arg.Int(rows), Arg.Int(plan.Chunk), Arg.Int(plan.Splits), Arg.Float(1f / MathF.Sqrt(headDim)),
                Arg.Int(batch ? 1 : 0), vid.Basis, Arg.Int(vid.Outliers), Arg.Int(vid.Salient));
            return false;
        }
        function.Launch(new Dim3((uint)plan.Splits, (uint)kvHeads, (uint)rows), Threads, plan.SharedBytes,
            q, pool, desc, headBlocks, headTokens, partOut, partMl, counters, output, Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(maxBlocks),
            Arg.Int(blockTokens), Arg.Int(valueGroup), Arg.Int(rows), Arg.Int(plan.Chunk), Arg.Int(plan.Splits), Arg.Float(1f / MathF.Sqrt(headDim)),
            Arg.Int(batch ? 1 : 0), prefetch.First, Arg.Long(prefetch.FirstBytes), prefetch.Second, Arg.Long(prefetch.SecondBytes));
        return false;
    }

    /// <summary>
    /// Where appended tokens go: one layer's tables, the pool and its allocator, the cache's geometry and formats; Arrivals and
    /// Claims: a zeroed int and 64-bit word per head of the tables (every launch leaves them zero) for the split batch append
    /// (<see cref="SplitBatchEncode"/>; 0: none, the batch append encodes in one block per head).
    /// </summary>
    public readonly record struct AppendTarget(ulong Pool, ulong Desc, ulong HeadBlocks, ulong HeadTokens, ulong Top, ulong Error, long PoolUnits,
        int MaxBlocks, int BlockTokens, int ValueGroup, int KeyFormat, int ValueFormat, ulong Arrivals = 0, ulong Claims = 0);

    /// <summary>
    /// Whether a batch append whose key and value formats are INT8/4/2 runs <c>paged_rope_append_split</c>: four blocks per
    /// (sequence, KV head), each storing and, when the residual fills, encoding a quarter of the channels (default: on;
    /// applies to launches queued, and graphs captured, after the change).
    /// At 8 × 32K over a KVzip 0.3 + INT4 cache the append where a head's residual fills went from 22-23 µs (one block
    /// encoding the head's two blocks in four dependent passes) to ~14, the step 1.8% faster (H100, stop 27).
    /// </summary>
    public bool SplitBatchEncode { get; set; } = true;

    /// <summary>
    /// Whether <c>paged_rope_append_split</c>, where its caller allows it (<see cref="RopeAppend"/>'s early), reads the
    /// position, the tables, and on a fill claims the slot and stages the earlier rows before its griddepcontrol.wait,
    /// during the QKV product's tail. On an H100 (stop 29, 8 × 32K, three alternating processes each): KVzip 0.3 + INT4,
    /// whose residuals fill in most layers of a step, 1.0% faster a step; the other rows within 0.11%.
    /// </summary>
    public bool EarlyBatchAppend { get; set; } = true;

    /// <summary>Blocks per (sequence, KV head) of <c>paged_rope_append_split</c> (its APPEND_SPLIT).</summary>
    private const int AppendSplit = 4;

    /// <summary>Floats of a residual's rows, keys or values, that paged_cache.cu stages in shared memory (its RESIDUAL_STAGE).</summary>
    private const int ResidualStageFloats = 4096;

    /// <summary>Whether <c>paged_rope_append_split</c> takes a batch append into <paramref name="a"/> with heads of <paramref name="headDim"/> channels.</summary>
    internal bool SplitsAppend(in AppendTarget a, int headDim)
    {
        static bool Int(int f) => f is (int)KvFormat.Int8 or (int)KvFormat.Int4 or (int)KvFormat.Int2;
        int quarter = headDim / AppendSplit;
        // A quarter holds whole value groups and whole code words (16 channels: an INT2 word); the staged rows fit residual_full's stage.
        return SplitBatchEncode && a.Arrivals != 0 && a.Claims != 0 && Int(a.KeyFormat) && Int(a.ValueFormat) && quarter % 16 == 0
            && quarter % a.ValueGroup == 0 && a.BlockTokens * headDim <= ResidualStageFloats;
    }

    /// <summary>
    /// RoPE of the fused QKV rows (optional q/k RMSNorm) at positions *position..: queries to <paramref name="qOut"/>, keys and
    /// values appended to one layer's heads (a residual that fills is encoded in the cache's formats). With
    /// <paramref name="batch"/>, row t is sequence t's one new token at position position[t], appended to the kvHeads heads
    /// at t · kvHeads in the tables. The head dimension must be a multiple of 16 (its encode packs a word of codes from one
    /// token's channels), as the paged attention's 64 and 128 are. <paramref name="early"/>: the caller's word that the
    /// kernel queued just before this one writes none of the cache's tables, rows, pool top or claims, nor the positions
    /// (a decode step's QKV product), so the split batch append may read them before its griddepcontrol.wait
    /// (<see cref="EarlyBatchAppend"/>).
    /// </summary>
    public void RopeAppend(ulong qkv, ulong qOut, ulong qNorm, ulong kNorm, ulong invFreq, in AppendTarget a,
        int rows, int heads, int kvHeads, int headDim, ulong position, bool interleaved, float eps, bool batch = false, bool early = false)
    {
        if (headDim % 16 != 0) throw new CudaException("paged append", $"head dimension {headDim} is not a multiple of 16");
        if (batch && SplitsAppend(a, headDim))
        {
            Decode(_cache["paged_rope_append_split"]).Launch(rows * heads + AppendSplit * rows * kvHeads, AppendThreads, 0, qkv, qOut, qNorm, kNorm, invFreq,
                a.Pool, a.Desc, a.HeadBlocks, a.HeadTokens, a.Top, a.Error, (ulong)a.PoolUnits, Arg.Int(rows), Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim),
                position, Arg.Int(interleaved ? 1 : 0), Arg.Float(eps), Arg.Int(a.MaxBlocks), Arg.Int(a.BlockTokens), Arg.Int(a.ValueGroup),
                Arg.Int(a.KeyFormat), Arg.Int(a.ValueFormat), a.Arrivals, a.Claims, Arg.Int(early && EarlyBatchAppend ? 1 : 0));
            return;
        }
        Decode(_cache["paged_rope_append"]).Launch(rows * heads + (batch ? rows : 1) * kvHeads, AppendThreads, 0, qkv, qOut, qNorm, kNorm, invFreq,
            a.Pool, a.Desc, a.HeadBlocks, a.HeadTokens, a.Top, a.Error, (ulong)a.PoolUnits, Arg.Int(rows), Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim),
            position, Arg.Int(interleaved ? 1 : 0), Arg.Float(eps), Arg.Int(a.MaxBlocks), Arg.Int(a.BlockTokens), Arg.Int(a.ValueGroup),
            Arg.Int(a.KeyFormat), Arg.Int(a.ValueFormat), Arg.Int(batch ? 1 : 0));
    }

    /// <summary>
    /// The decode QKV product of one row (batch 1, attention norm fused) with RoPE and the append into one layer's heads in its
    /// epilogue (paged_qkv_rope_append_*): what <see cref="RopeAppend"/> does after a plain product, without its launch. The
    /// last block of each KV head advances the residual (or encodes it when full); <paramref name="arrivals"/> holds one zeroed
    /// counter per KV head of the layer, which every launch leaves zero.
    /// </summary>
    public void QkvRopeAppend(DeviceWeightType type, ulong w, ulong x, ulong norm, float eps, int cols, ulong qOut, ulong invFreq, ulong position,
        bool interleaved, int heads, int kvHeads, int headDim, in AppendTarget a, ulong arrivals)
    {
        // Blocks of 8 warps (one rotation pair each) must hold pairs of one head: hd / 2 a multiple of 8.
        if (headDim % 16 != 0) throw new CudaException("paged QKV append", $"head dimension {headDim} is not a multiple of 16");
        int rows = (heads + 2 * kvHeads) * headDim;
        Decode(_cache[$"paged_qkv_rope_append_{CudaKernels.Suffix(type)}"]).Launch(rows / 16, 256, 0, w, x, norm, Arg.Float(eps), Arg.Int(rows),
            Arg.Int(cols), qOut, invFreq, position, Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim), Arg.Int(interleaved ? 1 : 0), a.Pool, a.Desc,
            a.HeadBlocks, a.HeadTokens, a.Top, a.Error, (ulong)a.PoolUnits, Arg.Int(a.MaxBlocks), Arg.Int(a.BlockTokens), Arg.Int(a.ValueGroup),
            Arg.Int(a.KeyFormat), Arg.Int(a.ValueFormat), arrivals);
    }

    /// <summary>Eviction of <paramref name="heads"/> heads by drop flags [heads, maxTokens] into <paramref name="newPool"/> (see paged_evict).</summary>
    public void Evict(ulong oldPool, ulong newPool, ulong desc, ulong headBlocks, ulong headTokens, ulong flags, ulong staging, ulong top, ulong error,
        long poolUnits, int heads, int maxBlocks, int maxTokens, int blockTokens, int headDim, int valueGroup) =>
        _cache["paged_evict"].Launch(heads, Threads, 0, oldPool, newPool, desc, headBlocks, headTokens, flags, staging, top, error, (ulong)poolUnits,
            Arg.Int(maxBlocks), Arg.Int(maxTokens), Arg.Int(blockTokens), Arg.Int(headDim), Arg.Int(valueGroup));
}
