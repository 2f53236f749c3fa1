using KvSharp.Cache.Blocks;
using KvSharp.Compute.Cuda.Model;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>
/// Launchers of the batch decode step's append folded into launches the step already has (paged_cache.cu): the QKV
/// product's epilogue rotates and appends (paged_qkv_rope_append_batch_*), and the attention-output product's launch
/// encodes the residuals that filled (paged_project_encode_*).
/// </summary>
internal sealed partial class CudaPagedKernels
{
    /// <summary>
    /// Whether a batch decode step (2..8 sequences) appends in its QKV product's epilogue and encodes filled residuals in
    /// its attention-output product's launch (<see cref="BatchQkvRopeAppend"/>, <see cref="ProjectEncode"/>) instead of
    /// the append's own launch (<see cref="RopeAppend"/>). On by default: on an H100 at 8 × 32K (stop 33, two rounds
    /// alternating) KVzip 0.3 + INT4 2.6% faster a step, KVzip 0.3 1.3%, KIVI-2 0.3%, KIVI-4 0.35%, FP8 the same, F16 paged
    /// 0.27% slower (its heads fill once in 32 steps, so it gains least from the encode moved out of the append's launch).
    /// Applies to graphs captured after the change; benchmarks compare both (bench-paged --fold-append).
    /// </summary>
    public bool FuseBatchAppend { get; set; } = true;

    /// <summary>Threads of a tensor-core product's block (gemv_mma.cuh).</summary>
    private const int ProductThreads = 256;

    private readonly HashSet<CudaFunction> _carvedOut = [];

    private long _foldedAppendLaunches;

    /// <summary>Batch QKV products with the append folded in queued so far (graph captures included): the checks' evidence that a step folded.</summary>
    internal long FoldedAppendLaunches => Interlocked.Read(ref _foldedAppendLaunches);

    /// <summary>
    /// Whether a batch step of <paramref name="rows"/> sequences can fold its append into the products <paramref name="qkv"/>
    /// and <paramref name="output"/>: both 16-bit and on tensor cores at that many rows, heads of 64 or 128 channels (the
    /// kernels' built head dimensions), and the target's per-head counters present. The QKV product reads the tables before
    /// its wait, as the split append does under <see cref="EarlyBatchAppend"/>: switching that off switches the fold off too.
    /// </summary>
    internal bool FoldsBatchAppend(CudaKernels kernels, DeviceMatrix qkv, DeviceMatrix output, int rows, int headDim, in AppendTarget a) =>
        FuseBatchAppend && EarlyBatchAppend && rows >= 2 && rows <= CudaKernels.MaxGemvRows && headDim is 64 or 128 && a.Arrivals != 0 && a.Claims != 0
        && qkv.Type is DeviceWeightType.BF16 or DeviceWeightType.F16 && output.Type is DeviceWeightType.BF16 or DeviceWeightType.F16
        && kernels.UsesTensorCoreGemv(qkv.Type, qkv.Cols, rows) && kernels.UsesTensorCoreGemv(output.Type, output.Cols, rows);

    /// <summary>
    /// The batch step's QKV product of <paramref name="rows"/> sequences (attention norm fused) with RoPE and the append in its
    /// epilogue: rotated queries to <paramref name="qOut"/> [rows, heads, hd]; each sequence's key and value rows into row
    /// count of its residual (sequence t's heads at t · kvHeads in <paramref name="a"/>'s tables), the counts advanced once
    /// a KV head's tiles are all written. A residual this fills stays full until <see cref="ProjectEncode"/> of the same
    /// layer, which must follow the attention.
    /// </summary>
    public void BatchQkvRopeAppend(CudaKernels kernels, DeviceMatrix w, ulong x, ulong norm, float eps, int rows, ulong qOut, ulong invFreq,
        ulong position, bool interleaved, int heads, int kvHeads, int headDim, in AppendTarget a)
    {
        int outRows = (heads + 2 * kvHeads) * headDim;
        if (w.Rows != outRows) throw new CudaException("paged batch QKV append", $"the QKV matrix has {w.Rows} rows, not {outRows}");
        var f = Product($"paged_qkv_rope_append_batch_{CudaKernels.Suffix(w.Type)}_{headDim}");
        Interlocked.Increment(ref _foldedAppendLaunches);
        f.Launch(kernels.TensorCoreGemvBlocks(f, outRows / 16), ProductThreads, 0, w.Pointer, x, norm, Arg.Float(eps), Arg.Int(outRows),
            Arg.Int(w.Cols), Arg.Int(rows), qOut, invFreq, position, Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(interleaved ? 1 : 0), a.Pool, a.Desc,
            a.HeadBlocks, a.HeadTokens, a.Error, Arg.Int(a.MaxBlocks), Arg.Int(a.BlockTokens), a.Arrivals);
    }

    /// <summary>
    /// The batch step's attention-output product y += x · wᵀ (<paramref name="rows"/> sequences) with encode blocks after its
    /// tiles that encode every residual of the layer's heads the step's <see cref="BatchQkvRopeAppend"/> filled, in the
    /// cache's formats (four blocks a head for INT8/4/2 pairs, as <see cref="SplitsAppend"/>, and for float pairs), after the
    /// attention (the launch's griddepcontrol.wait). The encode blocks take the wave's slots the product leaves free (at least one).
    /// </summary>
    public void ProjectEncode(CudaKernels kernels, DeviceMatrix w, ulong x, ulong y, int rows, int kvHeads, int headDim, in AppendTarget a)
    {
        static bool Float(int f) => f is (int)KvFormat.F32 or (int)KvFormat.BF16 or (int)KvFormat.F16 or (int)KvFormat.Fp8E4M3;
        // Four blocks a head where a quarter of the channels (INT8/4/2) or of the elements (float formats) encodes alone.
        bool split = SplitsAppend(a, headDim) || (SplitBatchEncode && Float(a.KeyFormat) && Float(a.ValueFormat) && a.BlockTokens * headDim % AppendSplit == 0);
        var f = Product($"paged_project_encode_{(split ? "parts" : "whole")}_{CudaKernels.Suffix(w.Type)}");
        int blocks = kernels.TensorCoreGemvBlocks(f, (w.Rows + 15) / 16);
        int tasks = rows * kvHeads * (split ? AppendSplit : 1);
        int encoders = Math.Clamp(kernels.TensorCoreGemvWaveOf(f) - blocks, 1, tasks);
        f.Launch(encoders + blocks, ProductThreads, 0, w.Pointer, x, y, Arg.Int(w.Rows), Arg.Int(w.Cols), Arg.Int(rows), Arg.Int(encoders), a.Pool,
            a.Desc, a.HeadBlocks, a.HeadTokens, a.Top, a.Error, (ulong)a.PoolUnits, Arg.Int(kvHeads), Arg.Int(headDim), Arg.Int(a.MaxBlocks),
            Arg.Int(a.BlockTokens), Arg.Int(a.ValueGroup), Arg.Int(a.KeyFormat), Arg.Int(a.ValueFormat), a.Arrivals, a.Claims);
    }

    /// <summary>
    /// A tensor-core product kernel of paged_cache.cu, asking once for the most L1 its blocks allow as gemv.cu's do (their
    /// activations are read through L1).
    /// </summary>
    private CudaFunction Product(string name)
    {
        var f = Decode(_cache[name]);
        lock (_carvedOut)
            if (_carvedOut.Add(f)) f.PreferL1(ProductThreads);
        return f;
    }
}
