using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using KvSharp.Formats;

namespace KvSharp.Compute.Cpu;

/// <summary>
/// Weight-times-activation products on the CPU: y[t, r] = dot(x[t, :], W[r, :]) with W read in its
/// stored type. Weight rows are split over <see cref="CpuThreads"/>; within a chunk of rows, the
/// activations are walked in tiles small enough for L2 so each weight row is read once per tile.
/// </summary>
internal static unsafe class MatMulCpu
{
    /// <summary>Instruction-set tiers of the kernels, best last.</summary>
    internal enum SimdLevel { Scalar, Vector128, Avx2, Avx512 }

    /// <summary>The best tier this machine runs.</summary>
    internal static readonly SimdLevel Detected =
        Avx512F.IsSupported && Vector512.IsHardwareAccelerated && FloatDot.Simd ? SimdLevel.Avx512
        : FloatDot.Simd ? SimdLevel.Avx2
        : Vector128.IsHardwareAccelerated ? SimdLevel.Vector128
        : SimdLevel.Scalar;

    /// <summary>Set by tests to force a lower (or emulated higher) tier for matmuls issued from the current thread.</summary>
    [ThreadStatic] internal static SimdLevel? ForceLevel;

    private enum Path { F32, Half16, Q8_0Act, Q8_KAct, Generic }

    private struct Job
    {
        public byte* W;
        public long RowBytes;
        public int Rows, Cols, N;
        public GgmlType Type;
        public float* X;
        public float* Y;
        public sbyte* Xq;
        public float* Xd;
        public short* Xs;
        public int ChunkRows;
        public int TileN;
        public SimdLevel Level;
    }

    /// <summary>Whether <paramref name="type"/> has a matmul path (specialized or via dequantization).</summary>
    public static bool IsSupported(GgmlType type) => Dequantize.IsSupported(type);

    /// <summary>y[t, r] = dot(x[t, :], W[r, :]).</summary>
    public static void Multiply(TensorView w, ReadOnlySpan<float> x, Span<float> y, int n)
    {
        ArgumentNullException.ThrowIfNull(w);
        long rowsL = w.Rows, colsL = w.Cols;
        if (rowsL > int.MaxValue || colsL > int.MaxValue)
            throw new ArgumentException($"tensor {w.Name} [{rowsL}, {colsL}] is too large for the CPU matmul", nameof(w));
        int rows = (int)rowsL, cols = (int)colsL;
        if (n < 0) throw new ArgumentOutOfRangeException(nameof(n), $"batch size {n} is negative");
        if (x.Length < (long)n * cols)
            throw new ArgumentException($"activations hold {x.Length} values, {n} rows of {cols} needed for {w.Name}", nameof(x));
        if (y.Length < (long)n * rows)
            throw new ArgumentException($"output holds {y.Length} values, {n} rows of {rows} needed for {w.Name}", nameof(y));
        if (!IsSupported(w.Type)) throw new NotSupportedException($"matmul with {w.Type} weights ({w.Name}) is not supported");
        if (cols % GgmlTypeInfo.BlockSize(w.Type) != 0)
            throw new ArgumentException($"tensor {w.Name} has {cols} columns, not a multiple of the {w.Type} block size", nameof(w));
        if (n == 0 || rows == 0) return;

        SimdLevel level = ForceLevel ?? Detected;
        var job = new Job
        {
            W = w.Data,
            RowBytes = GgmlTypeInfo.RowBytes(w.Type, cols),
            Rows = rows,
            Cols = cols,
            N = n,
            Type = w.Type,
            Level = level,
        };
        Path path = PathOf(w.Type);

        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            job.X = xp; job.Y = yp;
            var scratch = Scratch.ForCaller();
            if (path == Path.Q8_0Act)
            {
                long qBytes = (long)n * cols;
                long dCount = (long)n * (cols / 32);
                byte* buf = scratch.Get(qBytes + dCount * 4 + 64);
                job.Xq = (sbyte*)buf;
                job.Xd = (float*)(buf + Align(qBytes));
                for (int t = 0; t < n; t++)
                    QuantDot.QuantizeQ8_0(xp + (long)t * cols, cols, job.Xq + (long)t * cols, job.Xd + (long)t * (cols / 32));
            }
            else if (path == Path.Q8_KAct)
            {
                long qBytes = (long)n * cols;
                long dCount = (long)n * (cols / 256);
                long sCount = (long)n * (cols / 16);
                byte* buf = scratch.Get(qBytes + dCount * 4 + sCount * 2 + 128);
                job.Xq = (sbyte*)buf;
                job.Xd = (float*)(buf + Align(qBytes));
                job.Xs = (short*)(buf + Align(qBytes) + Align(dCount * 4));
                for (int t = 0; t < n; t++)
                    QuantDot.QuantizeQ8_K(xp + (long)t * cols, cols, job.Xq + (long)t * cols,
                        job.Xd + (long)t * (cols / 256), job.Xs + (long)t * (cols / 16));
            }

            // Activation tile: about 256 KiB of (quantized or float) activations stays in L2 while a
            // chunk's weight rows stream past it.
            long bytesPerX = path is Path.Q8_0Act or Path.Q8_KAct ? cols : 4L * cols;
            // A multiple of 12 so the 3-row float and 4-row quantized register tiles divide it.
            job.TileN = (int)Math.Clamp(256 * 1024 / Math.Max(1, bytesPerX), 12, Math.Max(12, n));
            job.TileN -= job.TileN % 12;

            int threads = CpuThreads.Count;
            // Enough chunks per thread to balance a busy machine, rows per chunk a multiple of 4
            // (the float kernels' row tile), and not so small that claiming dominates.
            long work = (long)rows * cols * n;
            int maxChunks = work < 32 * 1024 ? 1 : threads * 8;
            int chunkRows = Math.Max(4, (rows + maxChunks - 1) / maxChunks);
            chunkRows = (chunkRows + 3) & ~3;
            job.ChunkRows = chunkRows;
            int chunks = (rows + chunkRows - 1) / chunkRows;
            delegate*<void*, int, void> body = path switch
            {
                Path.F32 => &ChunkF32,
                Path.Half16 => &ChunkHalf16,
                Path.Q8_0Act or Path.Q8_KAct => &ChunkQuant,
                _ => &ChunkGeneric,
            };
            CpuThreads.Run(chunks, body, &job);
        }
    }

    private static long Align(long bytes) => (bytes + 63) & ~63L;

    private static Path PathOf(GgmlType t) => t switch
    {
        GgmlType.F32 => Path.F32,
        GgmlType.F16 or GgmlType.BF16 => Path.Half16,
        GgmlType.Q8_0 or GgmlType.Q4_0 => Path.Q8_0Act,
        GgmlType.Q4_K or GgmlType.Q6_K => Path.Q8_KAct,
        _ => Path.Generic,
    };

    private static void Range(Job* j, int chunk, out int r0, out int r1)
    {
        r0 = chunk * j->ChunkRows;
        r1 = Math.Min(j->Rows, r0 + j->ChunkRows);
    }

    // F32 weights: the row pointers are used in place.
    private static void ChunkF32(void* ctx, int chunk)
    {
        var j = (Job*)ctx;
        Range(j, chunk, out int r0, out int r1);
        FloatRows(j, (float*)j->W, j->Cols, r0, r1, 0);
    }

    /// <summary>
    /// Rows [r0, r1) of a float weight matrix whose row r sits at w + (r - wBase) * ws, against
    /// activation rows [tStart, tEnd) (all when tEnd is -1), writing y[t, r].
    /// </summary>
    private static void FloatRows(Job* j, float* w, long ws, int r0, int r1, int wBase, int tStart = 0, int tEnd = -1)
    {
        int cols = j->Cols, rows = j->Rows;
        int n = tEnd < 0 ? j->N : tEnd;
        float* x = j->X;
        float* y = j->Y;
        if (j->Level < SimdLevel.Avx2)
        {
            for (int r = r0; r < r1; r++)
                for (int t = tStart; t < n; t++)
                    y[(long)t * rows + r] = j->Level == SimdLevel.Vector128
                        ? PortableDot.F32V128(w + (r - wBase) * ws, x + (long)t * cols, cols)
                        : FloatDot.F32Scalar(w + (r - wBase) * ws, x + (long)t * cols, cols);
            return;
        }
        if (n == 1 && tStart == 0)
        {
            float* tmp = stackalloc float[4];
            int r = r0;
            for (; r + 4 <= r1; r += 4)
            {
                if (j->Level == SimdLevel.Avx512) PortableDot.F32x4V512(w + (r - wBase) * ws, ws, x, cols, tmp);
                else FloatDot.F32x4(w + (r - wBase) * ws, ws, x, cols, tmp);
                y[r] = tmp[0]; y[r + 1] = tmp[1]; y[r + 2] = tmp[2]; y[r + 3] = tmp[3];
            }
            for (; r < r1; r++) y[r] = FloatDot.F32x1(w + (r - wBase) * ws, x, cols);
            return;
        }
        float* tmp4 = stackalloc float[4];
        for (int t0 = tStart; t0 < n; t0 += j->TileN)
        {
            int t1 = Math.Min(n, t0 + j->TileN);
            int r = r0;
            for (; r + 4 <= r1; r += 4)
            {
                int t = t0;
                for (; t + 3 <= t1; t += 3)
                    FloatDot.F32Tile4x3(w + (r - wBase) * ws, ws, x + (long)t * cols, cols, cols, y + (long)t * rows + r, rows);
                for (; t < t1; t++)
                {
                    FloatDot.F32x4(w + (r - wBase) * ws, ws, x + (long)t * cols, cols, tmp4);
                    for (int k = 0; k < 4; k++) y[(long)t * rows + r + k] = tmp4[k];
                }
            }
            for (; r < r1; r++)
                for (int t = t0; t < t1; t++)
                    y[(long)t * rows + r] = FloatDot.F32x1(w + (r - wBase) * ws, x + (long)t * cols, cols);
        }
    }

    // F16/BF16: decode converts on the fly inside the dot; prefill widens 4 rows at a time into a
    // per-thread float buffer and reuses the F32 tiles (conversion amortized over the batch).
    private static void ChunkHalf16(void* ctx, int chunk)
    {
        var j = (Job*)ctx;
        Range(j, chunk, out int r0, out int r1);
        int cols = j->Cols, n = j->N, rows = j->Rows;
        bool bf16 = j->Type == GgmlType.BF16;
        long stride = j->RowBytes / 2;
        ushort* w = (ushort*)j->W;
        if (j->Level < SimdLevel.Avx2)
        {
            for (int r = r0; r < r1; r++)
                for (int t = 0; t < n; t++)
                    j->Y[(long)t * rows + r] = j->Level == SimdLevel.Vector128
                        ? PortableDot.Half16V128(w + r * stride, j->X + (long)t * cols, cols, bf16)
                        : FloatDot.Half16Scalar(w + r * stride, j->X + (long)t * cols, cols, bf16);
            return;
        }
        if (n == 1 && !bf16 && j->Level == SimdLevel.Avx2)
        {
            // F16 decode: activations pre-scaled once per chunk so the weights widen in 3 ops (FloatDot.F16x4Scaled).
            int k = FloatDot.F16ActivationScaleExponent(j->X, cols);
            float* xs = (float*)Scratch.ForWorker().Get(4L * cols);
            System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(j->X, cols), MathF.ScaleB(1f, k), new Span<float>(xs, cols));
            float unscale = MathF.ScaleB(1f, 112 - k);
            float* tmp = stackalloc float[4];
            int r = r0;
            for (; r + 4 <= r1; r += 4)
            {
                FloatDot.F16x4Scaled(w + r * stride, stride, xs, j->X, cols, unscale, tmp);
                for (int q = 0; q < 4; q++) j->Y[r + q] = tmp[q];
            }
            for (; r < r1; r++) j->Y[r] = FloatDot.Half16x1(w + r * stride, j->X, cols, bf16);
            return;
        }
        if (n == 1)
        {
            float* tmp = stackalloc float[4];
            int r = r0;
            for (; r + 4 <= r1; r += 4)
            {
                if (j->Level == SimdLevel.Avx512) PortableDot.Half16x4V512(w + r * stride, stride, j->X, cols, tmp, bf16);
                else FloatDot.Half16x4(w + r * stride, stride, j->X, cols, tmp, bf16);
                for (int k = 0; k < 4; k++) j->Y[r + k] = tmp[k];
            }
            for (; r < r1; r++) j->Y[r] = FloatDot.Half16x1(w + r * stride, j->X, cols, bf16);
            return;
        }
        // Activation tiles outermost so a tile stays in L2 while the chunk's rows pass; rows are
        // re-widened per tile (1/TileN of the FMA work).
        float* buf = (float*)Scratch.ForWorker().Get(4L * 4 * cols);
        for (int t0 = 0; t0 < n; t0 += j->TileN)
        {
            int t1 = Math.Min(n, t0 + j->TileN);
            for (int r = r0; r < r1; r += 4)
            {
                int re = Math.Min(r1, r + 4);
                for (int k = r; k < re; k++)
                {
                    if (bf16) FloatDot.Bf16Row(w + k * stride, buf + (long)(k - r) * cols, cols);
                    else FloatDot.HalfRow(w + k * stride, buf + (long)(k - r) * cols, cols);
                }
                FloatRows(j, buf, cols, r, re, r, t0, t1);
            }
        }
    }

    // Quantized weights with quantized activations: the weight row stays in L1 across an activation tile.
    private static void ChunkQuant(void* ctx, int chunk)
    {
        var j = (Job*)ctx;
        Range(j, chunk, out int r0, out int r1);
        int cols = j->Cols, n = j->N, rows = j->Rows;
        bool s = j->Level < SimdLevel.Avx2;
        bool v128 = j->Level == SimdLevel.Vector128;
        long qs = cols, ds8 = cols / 32, dsK = cols / 256, ssK = cols / 16;
        float* y4 = stackalloc float[4];
        for (int t0 = 0; t0 < n; t0 += j->TileN)
        {
            int t1 = Math.Min(n, t0 + j->TileN);
            for (int r = r0; r < r1; r++)
            {
                byte* wr = j->W + r * j->RowBytes;
                int t4 = t0;
                if (!s)
                {
                    // Four activation rows per pass over the weight row, then the remainder one by one.
                    for (; t4 + 4 <= t1; t4 += 4)
                    {
                        sbyte* xq = j->Xq + t4 * qs;
                        switch (j->Type)
                        {
                            case GgmlType.Q8_0:
                            case GgmlType.Q4_0:
                                QuantDot.Q8Blocks4(wr, j->Type == GgmlType.Q4_0, xq, j->Xd + t4 * ds8, qs, ds8, cols / 32, y4);
                                break;
                            case GgmlType.Q4_K:
                                QuantDot.Q4_Kx4(wr, xq, j->Xd + t4 * dsK, j->Xs + t4 * ssK, qs, dsK, ssK, cols / 256, y4);
                                break;
                            default:
                                QuantDot.Q6_Kx4(wr, xq, j->Xd + t4 * dsK, j->Xs + t4 * ssK, qs, dsK, ssK, cols / 256, y4);
                                break;
                        }
                        for (int k = 0; k < 4; k++) j->Y[(t4 + k) * (long)rows + r] = y4[k];
                    }
                }
                for (int t = t4; t < t1; t++)
                {
                    sbyte* xq = j->Xq + (long)t * cols;
                    float v;
                    switch (j->Type)
                    {
                        case GgmlType.Q8_0:
                            {
                                float* xd = j->Xd + (long)t * (cols / 32);
                                v = v128 ? PortableDot.Q8BlocksV128(wr, false, xq, xd, cols / 32)
                                    : s ? QuantDot.Q8_0Scalar(wr, xq, xd, cols / 32) : QuantDot.Q8_0(wr, xq, xd, cols / 32);
                                break;
                            }
                        case GgmlType.Q4_0:
                            {
                                float* xd = j->Xd + (long)t * (cols / 32);
                                v = v128 ? PortableDot.Q8BlocksV128(wr, true, xq, xd, cols / 32)
                                    : s ? QuantDot.Q4_0Scalar(wr, xq, xd, cols / 32) : QuantDot.Q4_0(wr, xq, xd, cols / 32);
                                break;
                            }
                        case GgmlType.Q4_K:
                            {
                                float* xd = j->Xd + (long)t * (cols / 256);
                                short* xs = j->Xs + (long)t * (cols / 16);
                                v = s ? QuantDot.Q4_KScalar(wr, xq, xd, xs, cols / 256) : QuantDot.Q4_K(wr, xq, xd, xs, cols / 256);
                                break;
                            }
                        default:
                            {
                                float* xd = j->Xd + (long)t * (cols / 256);
                                short* xs = j->Xs + (long)t * (cols / 16);
                                v = s ? QuantDot.Q6_KScalar(wr, xq, xd, xs, cols / 256) : QuantDot.Q6_K(wr, xq, xd, xs, cols / 256);
                                break;
                            }
                    }
                    j->Y[(long)t * rows + r] = v;
                }
            }
        }
    }

    // Every other type: dequantize each weight row (reference code) into a buffer, then float dots.
    private static void ChunkGeneric(void* ctx, int chunk)
    {
        var j = (Job*)ctx;
        Range(j, chunk, out int r0, out int r1);
        int cols = j->Cols;
        float* buf = (float*)Scratch.ForWorker().Get(4L * cols);
        var span = new Span<float>(buf, cols);
        for (int r = r0; r < r1; r++)
        {
            Dequantize.Block(j->Type, j->W + r * j->RowBytes, span);
            FloatRows(j, buf, cols, r, r + 1, r);
        }
    }

    /// <summary>Per-thread growable native scratch (64-byte aligned), never shrunk.</summary>
    private sealed class Scratch
    {
        [ThreadStatic] private static Scratch? _caller;
        [ThreadStatic] private static Scratch? _worker;
        private byte* _p;
        private long _size;

        // Two per thread: the caller's (quantized activations, read by all workers during a call)
        // and the worker's (row buffers), so a thread that is both never overwrites what others read.
        public static Scratch ForCaller() => _caller ??= new Scratch();
        public static Scratch ForWorker() => _worker ??= new Scratch();

        public byte* Get(long bytes)
        {
            if (bytes > _size)
            {
                if (_p != null) NativeMemory.AlignedFree(_p);
                _size = Math.Max(bytes, _size * 2);
                _p = (byte*)NativeMemory.AlignedAlloc((nuint)_size, 64);
            }
            return _p;
        }

        ~Scratch()
        {
            if (_p != null) NativeMemory.AlignedFree(_p);
        }
    }
}
