// The tensor-core matrix-vector product of 2..8 activation rows (batch decode): gemv.cu's products and, with an epilogue
// of its own (MODE 5), paged_cache.cu's batch QKV product that rotates and appends into the paged cache.
#pragma once
#include "gemv.cuh"

// Tensor-core matrix-vector products for 2..8 activation rows (batch decode), bfloat16 or float16 weights, cols a
// multiple of 256. A block of 8 warps owns 16 output rows (SwiGLU: 8 gate rows and their 8 up rows) and splits the
// columns 8 ways; each warp multiplies with mma.m16n8k16: A = 16 weight rows straight from global memory (each lane's
// 16-byte load of 8 consecutive columns of row g and of row g + 8 is its A fragment of two k-steps, the k order
// permuted the same way in A and B, which a dot product does not notice), B = the 8 activation rows (rows past nt
// repeat row 0: their C columns are never stored) rounded to the weight's 16-bit type, C in float32. The 8 warps'
// fragments are summed through shared memory. Every weight byte is read once and every activation element is loaded
// once per 16 weight rows, where gemv.cuh's CUDA-core kernel reloads activations per two rows (its L1 traffic limits it
// to ~1/3 of the bandwidth at 8 rows).
// Each lane keeps D steps of weight loads in flight (a register ring, the first D steps loaded before pdl_wait; D is
// MMA_RING or, for gemv.cu's products without a norm, MMA_RING_DEEP): the earlier loop, compiled with one or two steps'
// loads in flight, was latency-bound (a batch-8 step 18% slower).
template <bool BF16>
__device__ __forceinline__ unsigned pack_x(float lo, float hi)
{
    return BF16 ? ((unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16))
                : ((unsigned)f32_to_f16(lo) | ((unsigned)f32_to_f16(hi) << 16));
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    if (BF16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

constexpr int MMA_WARPS = 8;
// Steps (32 columns of a warp's 16 rows: two 16-byte loads a lane) in flight per lane. 4 with 3 blocks a multiprocessor
// (__launch_bounds__ below: 80 registers) measured fastest on an H100 (docs/benchmarks.md, branch gpumma8): 4 blocks
// (64 registers) were 5% slower a batch-8 step at 4K, 8 steps (2 blocks) 5%, two row tiles a warp sharing the activations
// (4 steps, 2 blocks) 0.4%, a 4- or 5-step cp.async ring in shared memory 13-14%, columns split over 2 blocks adding
// atomically (the 256-block products) 0.7%. The products without a fused norm (gemv.cu's attention output, down and plain
// products) take MMA_RING_DEEP steps at 2 blocks a multiprocessor (128 registers): on an H200, whose memory is 1.4x an
// H100's, they held too few bytes in flight at 4 (attention output 64% of the copy bandwidth, down 71%; 6 steps: 84%
// and 87%, 8 steps: 79% and 85%; stop 35). The normed ones keep 4 (their activation and norm loads take the registers).
constexpr int MMA_RING = 4;
constexpr int MMA_RING_DEEP = 6;

// A block's reduction buffers (warps' C fragments and the fused norm's sums, each alternating by tile) as one object a
// kernel (a function's static shared variable), for gemv_mma's SHARED_RED: paged_cache.cu's encode blocks, which never run
// the product, stage their rows in the same bytes, so that their launch keeps the product's shared memory, and with it its
// carve-out and L1. (The other products keep their own arrays: NVRTC 12.4 compiles them as before.)
struct MmaShared
{
    float4 red[2][MMA_WARPS][32];
    float ssr[2][MMA_WARPS][8];
};

__device__ __forceinline__ MmaShared& mma_shared()
{
    __shared__ MmaShared shared;
    return shared;
}

// A weight load for the ring: volatile, so that the front end keeps it in program order with the (volatile) mma.
// L2::256B: L2 fetches the whole 256-byte piece of the row, of which a warp's step reads 64 bytes (4 lanes x 16) and its
// next 3 steps the rest, so DRAM sees 256-byte requests and the ring's 4 steps stand for up to 16 steps of DRAM reads
// (1.3% faster a batch-8 step at 4K on an H100, every product faster).
__device__ __forceinline__ uint4 load_weights(const uint4* p)
{
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// Row tiles (16 output rows; SwiGLU: 8 gate/up pairs) are strided over the product's blocks: block b takes tiles b, b + B, ...
// (B = gridDim.x - others).
// The host launches one block a tile where the tiles fit one wave, else at most one wave with the tiles split evenly
// (CudaKernels.Gemv): a grid of several waves paid a ramp of ~2 us at every wave boundary (all the new blocks waiting for
// their first data together) and ran its last wave part-full (docs/benchmarks.md, branches gpuoverlap and gpupt). Where a
// warp's steps are a multiple of the ring, the refills past a tile's last step load the next tile's first steps, so that
// a block's loads stay in flight while it reduces a tile. The reduction buffers alternate by tile: warp 0 may still read
// a tile's while the other warps store the next one's.
// MODE 4 (the output head of a batch step, NORM): MODE 0 that also folds each activation row's largest logit into best[t]
// (argmax_key, one 64-bit atomicMax per tile and row, as gemv.cuh's MODE 4), so the greedy tokens need no pass over the
// logits: the separate argmax, one block of 1024 threads a row, read 8 x 128256 logits in ~50 us at batch 8 on an H100.
// H16 (the feed-forward's two products, CudaKernels.Gemv's `narrow`): MODE 2 stores its SwiGLU outputs in the weights'
// 16-bit type, and MODE 1 reads its activations in that type, so the down product's x (14336 columns of 8 rows: 459 KB
// as float32, more than a multiprocessor's L1, read by each of its ~256 blocks from L2) is half the bytes. The values
// are those the mma would take anyway: the float path rounds each activation with the same conversion (pack_x).
// MODE 5 (paged_cache.cu's batch QKV append, NORM): MODE 0 whose epilogue is Epi's instead of a store: Epi::rows maps a tile's
// rows g and g + 8 to weight rows (a head's two rotation partners), Epi::early reads what the epilogue needs from earlier
// kernels (the whole block before pdl_wait for its first tile, warp 0 for later ones; kept in shared memory, not registers,
// which the product's loop needs all of; the tile's reduction barrier orders it before the epilogue), Epi::store takes warp
// 0's sums.
// SHARED_RED: the reduction buffers are mma_shared()'s, which the kernel's other blocks may use for their own work.
// others: blocks after the product's in the grid (paged_cache.cu's encode blocks beside the attention-output product): the
// product's tiles go to blocks 0 .. gridDim.x - others - 1.
template <bool BF16, int MODE, bool NORM, bool H16 = false, class Epi = int, bool SHARED_RED = false, int D = MMA_RING>
__device__ __forceinline__ void gemv_mma(const u16* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
    const float* __restrict__ nw, float eps, int rows, int cols, int nt, unsigned long long* __restrict__ best = nullptr, int others = 0,
    const Epi& epi = Epi())
{
    static_assert(!H16 || MODE == 1 || MODE == 2, "16-bit activations: the SwiGLU product's output, the accumulating product's input");
    static_assert(!H16 || MODE != 1 || !NORM, "the fused norm reads float32 activations");
    constexpr bool XH = H16 && MODE == 1; // activations in 16 bits
    constexpr int TILE = MODE == 2 ? 8 : 16;
    float4 (*red)[MMA_WARPS][32];
    float (*ssr)[MMA_WARPS][8];
    if constexpr (SHARED_RED)
    {
        red = mma_shared().red;
        ssr = mma_shared().ssr;
    }
    else
    {
        __shared__ float4 red_own[2][MMA_WARPS][32];
        __shared__ float ssr_own[2][MMA_WARPS][8];
        red = red_own;
        ssr = ssr_own;
    }
    const int tiles = (rows + TILE - 1) / TILE, stride = gridDim.x - others;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int kper = cols / MMA_WARPS, k0 = warp * kper;
    const int steps = kper / 32; // 32 columns per step: 4 lanes x 8
    const bool chain = steps % D == 0;
    // A lane's two weight rows (g and g + 8; SwiGLU: gate row g and its up row) of a tile, at its warp's columns.
    auto rowsOf = [&](int tile, const uint4*& pa, const uint4*& pb) {
        int ra = min(tile * TILE + g, rows - 1);
        int rb = MODE == 2 ? ra + rows : min(tile * TILE + g + 8, rows - 1);
        if constexpr (MODE == 5) epi.rows(min(tile, tiles - 1), g, ra, rb);
        pa = reinterpret_cast<const uint4*>(w + (long)ra * cols + k0 + tq * 8);
        pb = reinterpret_cast<const uint4*>(w + (long)rb * cols + k0 + tq * 8);
    };
    int tile = blockIdx.x;
    const uint4 *wa, *wb, *na, *nb; // this tile's rows and the next one's (this tile's again where there is none)
    rowsOf(tile, wa, wb);
    rowsOf(tile + stride < tiles ? tile + stride : tile, na, nb);
    // Loads past the last step reload the last one (an L2 hit) instead of being predicated off: a predicated load into
    // the ring costs a register copy each. Weights never depend on the previous kernel: the first D steps go out before
    // pdl_wait.
    uint4 ring[D][2];
#pragma unroll
    for (int i = 0; i < D; i++)
    {
        const int si = min(i, steps - 1) * 4;
        ring[i][0] = load_weights(wa + si);
        ring[i][1] = load_weights(wb + si);
    }
    // Lanes of activation rows g >= nt read row 0 instead: their products only reach C columns g (never stored), so
    // no select zeroes them (8 fewer instructions a step).
    const float4* xr = reinterpret_cast<const float4*>(x + (long)(g < nt ? g : 0) * cols + k0 + tq * 8);
    // XH: the same 8 columns as one 16-byte load of 16-bit values, already the B words (columns 2j, 2j + 1 in word j).
    const uint4* xh = reinterpret_cast<const uint4*>(reinterpret_cast<const u16*>(x) + (long)(g < nt ? g : 0) * cols + k0 + tq * 8);
    const float4* nr = reinterpret_cast<const float4*>(nw + k0 + tq * 8);
    if constexpr (MODE == 5) epi.early(tile, threadIdx.x, blockDim.x, nt);
    pdl_wait();

    for (int it = 0;; it++)
    {
        const bool hasNext = tile + stride < tiles;
        float c[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
        float ss = 0.0f;
        // One step: ring slot a's weights times activation columns 8 of row g as B words b (XH), or as x0, x1 with the norm
        // folded in.
        auto step16 = [&](const uint4 (&a)[2], uint4 b) {
            mma16816<BF16>(c, a[0].x, a[1].x, a[0].y, a[1].y, b.x, b.y);
            mma16816<BF16>(c, a[0].z, a[1].z, a[0].w, a[1].w, b.z, b.w);
        };
        auto step = [&](const uint4 (&a)[2], float4 x0, float4 x1, int s) {
            if (NORM)
            {
                ss += x0.x * x0.x + x0.y * x0.y + x0.z * x0.z + x0.w * x0.w + x1.x * x1.x + x1.y * x1.y + x1.z * x1.z + x1.w * x1.w;
                const float4 n0 = __ldg(nr + s * 8), n1 = __ldg(nr + s * 8 + 1);
                x0.x *= n0.x; x0.y *= n0.y; x0.z *= n0.z; x0.w *= n0.w;
                x1.x *= n1.x; x1.y *= n1.y; x1.z *= n1.z; x1.w *= n1.w;
            }
            mma16816<BF16>(c, a[0].x, a[1].x, a[0].y, a[1].y, pack_x<BF16>(x0.x, x0.y), pack_x<BF16>(x0.z, x0.w));
            mma16816<BF16>(c, a[0].z, a[1].z, a[0].w, a[1].w, pack_x<BF16>(x1.x, x1.y), pack_x<BF16>(x1.z, x1.w));
        };
        // A group of D steps with no branch between its steps, so that its activation loads all go out at its start (one
        // L1/L2 round trip a group, not a step) while the ring's D steps of weights are in flight; each slot is refilled
        // from pa/pb at step base + i (clamped to the last step where asked) once its products are issued.
        auto group = [&](int s0, const uint4* pa, const uint4* pb, int base, bool clamp) {
            float4 xs[D][2];
            uint4 xs16[D];
#pragma unroll
            for (int i = 0; i < D; i++)
            {
                if constexpr (XH) xs16[i] = __ldg(xh + (s0 + i) * 4);
                else { xs[i][0] = __ldg(xr + (s0 + i) * 8); xs[i][1] = __ldg(xr + (s0 + i) * 8 + 1); }
            }
#pragma unroll
            for (int i = 0; i < D; i++)
            {
                if constexpr (XH) step16(ring[i], xs16[i]);
                else step(ring[i], xs[i][0], xs[i][1], s0 + i);
                const int si = (clamp ? min(base + i, steps - 1) : base + i) * 4;
                ring[i][0] = load_weights(pa + si);
                ring[i][1] = load_weights(pb + si);
            }
        };
        int s0 = 0;
        for (; s0 + 2 * D <= steps; s0 += D) group(s0, wa, wb, s0 + D, false);
        if (s0 + D <= steps)
        {
            // The last whole group: where the ring ends with it, its refills are the next tile's first D steps.
            if (chain && hasNext) group(s0, na, nb, 0, false);
            else group(s0, wa, wb, s0 + D, true);
            s0 += D;
        }
        // The last steps % D steps, already in slots 0 .. steps - s0 - 1.
#pragma unroll
        for (int i = 0; i < D - 1; i++)
            if (s0 + i < steps)
            {
                if constexpr (XH) step16(ring[i], __ldg(xh + (s0 + i) * 4));
                else step(ring[i], __ldg(xr + (s0 + i) * 8), __ldg(xr + (s0 + i) * 8 + 1), s0 + i);
            }
        if (!hasNext) pdl_trigger();
        const int buf = it & 1;
        red[buf][warp][lane] = make_float4(c[0], c[1], c[2], c[3]);
        if (NORM)
        {
            ss += __shfl_xor_sync(0xffffffffu, ss, 1);
            ss += __shfl_xor_sync(0xffffffffu, ss, 2);
            if (tq == 0) ssr[buf][warp][g] = ss;
        }
        __syncthreads();
        if (warp == 0)
        {
            float4 sum = red[buf][0][lane];
#pragma unroll
            for (int i = 1; i < MMA_WARPS; i++) { const float4 v = red[buf][i][lane]; sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w; }
            // C fragment: (row g, activation rows 2tq and 2tq+1) in x, y; (row g + 8, same) in z, w.
            const int t0 = 2 * tq, t1 = 2 * tq + 1;
            float inv0 = 1.0f, inv1 = 1.0f;
            if (NORM)
            {
                float q0 = 0.0f, q1 = 0.0f;
#pragma unroll
                for (int i = 0; i < MMA_WARPS; i++) { q0 += ssr[buf][i][t0]; q1 += ssr[buf][i][t1]; }
                inv0 = 1.0f / sqrtf(q0 / cols + eps);
                inv1 = 1.0f / sqrtf(q1 / cols + eps);
            }
            const float v[4] = { sum.x * inv0, sum.y * inv1, sum.z * inv0, sum.w * inv1 };
            if (MODE == 2)
            {
                const int r = tile * TILE + g;
                if (r < rows)
                {
                    // Each branch computes its own outputs: sharing o0, o1 with the float branch changed its code (NVRTC 12.4:
                    // 8 more instructions, the norm build's spills moved), so the float stores stay as they were.
                    if constexpr (H16)
                    {
                        u16* yh = reinterpret_cast<u16*>(y);
                        const float o0 = v[0] / (1.0f + expf(-v[0])) * v[2], o1 = v[1] / (1.0f + expf(-v[1])) * v[3];
                        if (t0 < nt) yh[(long)t0 * rows + r] = BF16 ? f32_to_bf16(o0) : f32_to_f16(o0);
                        if (t1 < nt) yh[(long)t1 * rows + r] = BF16 ? f32_to_bf16(o1) : f32_to_f16(o1);
                    }
                    else
                    {
                        if (t0 < nt) y[(long)t0 * rows + r] = v[0] / (1.0f + expf(-v[0])) * v[2];
                        if (t1 < nt) y[(long)t1 * rows + r] = v[1] / (1.0f + expf(-v[1])) * v[3];
                    }
                }
            }
            else if constexpr (MODE == 5)
            {
                // A block's later tiles read after the wait: a head's tables change only once all its tiles, this one too, arrived.
                if (it > 0)
                {
                    epi.early(tile, lane, 32, nt);
                    __syncwarp();
                }
                epi.store(tile, lane, v, nt);
            }
            else if (MODE == 4)
            {
                // Lane (g, tq) holds rows g and g + 8 of activation rows 2tq and 2tq + 1: per activation row, the key over the
                // lane's two rows, then the maximum over the 8 lanes of a tq (lane bits 2-4); lane g = 0 adds it to best[t].
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    const int t = 2 * tq + e;
                    unsigned long long key = 0ull;
#pragma unroll
                    for (int h = 0; h < 2; h++)
                    {
                        const int r = tile * TILE + g + 8 * h;
                        const float s = v[2 * h + e];
                        if (r >= rows) continue;
                        if (t < nt) y[(long)t * rows + r] = s;
                        if (s == s) { const unsigned long long k = argmax_key(s, r); key = k > key ? k : key; } // NaN never wins
                    }
#pragma unroll
                    for (int o = 4; o < 32; o <<= 1)
                    {
                        const unsigned long long k = __shfl_xor_sync(0xffffffffu, key, o);
                        key = k > key ? k : key;
                    }
                    if (g == 0 && t < nt && key != 0ull) atomicMax(best + t, key);
                }
            }
            else
            {
#pragma unroll
                for (int h = 0; h < 2; h++)
                {
                    const int r = tile * TILE + g + 8 * h;
                    if (r >= rows) continue;
#pragma unroll
                    for (int e = 0; e < 2; e++)
                    {
                        const int t = 2 * tq + e;
                        if (t >= nt) continue;
                        if (MODE == 1) y[(long)t * rows + r] += v[2 * h + e];
                        else y[(long)t * rows + r] = v[2 * h + e];
                    }
                }
            }
        }
        if (!hasNext) return;
        tile += stride;
        wa = na;
        wb = nb;
        rowsOf(tile + stride < tiles ? tile + stride : tile, na, nb);
        if (!chain)
        {
#pragma unroll
            for (int i = 0; i < D; i++)
            {
                const int si = min(i, steps - 1) * 4;
                ring[i][0] = load_weights(wa + si);
                ring[i][1] = load_weights(wb + si);
            }
        }
    }
}

