// The CUDA-core matrix-vector product of decode: gemv.cu instantiates it, paged_cache.cu instantiates MODE 3 with the
// paged cache's epilogue (paged_qkv_rope_append).
#pragma once
// Matrix-vector products for decode: y[t, r] = sum_c w[r, c] * x[t, c] for NT <= 8 activation rows.
// Memory-bound: every weight byte is read once (16 bytes per lane per load, bypassing L1), each warp
// owns two output rows so every activation load from L1 serves two weight loads, and the unrolled
// loop keeps several loads in flight. Accumulation is float32.
//   MODE 0: y[t, r] = dot.
//   MODE 1: y[t, r] += dot (the residual add fused). The columns are split into ksplit parts, each its
//           own warp adding atomically, so long rows (the down projection) spread over enough warps to
//           balance the SMs.
//   MODE 2: SwiGLU over a [2 * rows, cols] matrix holding gate rows then up rows:
//           y[t, r] = silu(dot(gate_r)) * dot(up_r) (the feed-forward's first half in one pass).
//   MODE 4: MODE 0 (the output head) that also folds every row's value into best[t] with a 64-bit atomicMax
//           (argmax_key), so the greedy token needs no second pass over the logits (argmax_finish reads it).
//   MODE 3: the fused QKV product of one decode row (NT = 1) with RoPE and the cache append in its epilogue:
//           warp p owns the rotation pair of head p / (hd/2) (dims i, i + hd/2, or 2i, 2i + 1 interleaved), so
//           lane 0 holds both inputs of the rotation; queries go to q_out, keys and values (float16) into the
//           cache at the device-side position (no separate qkv_rope_append launch). The epilogue is a type RA:
//           e = ra.early(head, i) runs in every thread of an active warp right after pdl_wait, so that what the epilogue
//           will read from memory (the paged cache's tables) is in flight during the product, not after it;
//           ra.pair(head, i, x0, x1, e) takes lane 0's rotation pair, then ra.finish(head, e) is called by every thread
//           of the block (blocks hold whole heads when hd is a multiple of 16 and the grid has no idle warp), so an
//           epilogue may end with block-wide work (the paged cache's residual bookkeeping and encode). RA::stage() gives
//           the shared memory the NORM product stages its activations in.
// NORM (modes 0, 2, 3 and 4, whole rows per warp): x is the raw residual stream and the product is taken
// with RMSNorm(x) * nw, the norm fused in, the dot scaled by 1/sqrt(mean(x^2) + eps) at the end (no separate
// norm kernel, no normed copy in memory). One row (NT = 1, vectorized): the block stages x * nw in shared memory,
// GEMV_STAGE columns at a time, summing x^2 on the way, so the loop is the plain product's (one activation load a
// weight vector; on an H200 the loop that also loaded nw and summed x^2 held 72 registers, 3 blocks a multiprocessor,
// and ran the gate/up product at 85% of the copy bandwidth, the plain one at 100%). More rows: the loop multiplies x
// by nw and sums x^2 itself.
// The first GEMV_PREFETCH vectors of each lane's two rows are loaded before pdl_wait: weights do not depend
// on the previous kernel, so under programmatic dependent launch a block that starts while the previous
// kernel drains already has its first loads in flight (no DRAM idle between kernels).
// gemv_mma_* below does the same for 2-8 rows on tensor cores (batch decode).
#include "common.cuh"

constexpr int GEMV_PREFETCH = 4;
// Columns of x * nw a NORM block stages in shared memory at once (16 KB: a 4096-wide model's whole row).
constexpr int GEMV_STAGE = 4096;

// MODE 3's epilogue over the dense float16 cache: rotation pair i (dims i0, i1) of QKV head `head`, values x0, x1 (already
// normed and summed). Query heads are rotated into q_out, key heads rotated into the float16 cache, value heads stored as
// they are; the same arithmetic as qkv_rope_append in elementwise.cu.
struct RopeAppend
{
    float* q_out;
    u16* kc;
    u16* vc;
    const float* inv_freq;
    const int* pos;
    int heads, kv_heads, hd, capacity, interleaved;

    struct Early {};
    __device__ __forceinline__ Early early(int, int) const { return {}; }

    // Shared memory for a NORM product's staged activations (GEMV_STAGE floats; an epilogue with shared memory of its own
    // may lend it instead, as the paged cache's does).
    __device__ static __forceinline__ float4* stage()
    {
        __shared__ float4 xs[GEMV_STAGE / 4];
        return xs;
    }

    __device__ __forceinline__ void pair(int head, int i, float x0, float x1, Early) const
    {
        const int p = *pos;
        int i0, i1;
        rope_channels(i, hd, interleaved, i0, i1);
        if (head >= heads + kv_heads)
        {
            u16* dst = vc + ((long)(head - heads - kv_heads) * capacity + p) * hd;
            dst[i0] = f32_to_f16(x0);
            dst[i1] = f32_to_f16(x1);
            return;
        }
        float y0, y1;
        rope_rotate(p, inv_freq[i], x0, x1, y0, y1);
        if (head < heads)
        {
            float* dst = q_out + (long)head * hd;
            dst[i0] = y0;
            dst[i1] = y1;
        }
        else
        {
            u16* dst = kc + ((long)(head - heads) * capacity + p) * hd;
            dst[i0] = f32_to_f16(y0);
            dst[i1] = f32_to_f16(y1);
        }
    }

    __device__ __forceinline__ void finish(int, Early) const {}
};

// MODE 4's running greedy choice per activation row: (orderable value bits << 32) | ~index, so the 64-bit
// maximum is the largest value and, among equal values, the first index (the CPU sampler's rule).
__device__ __forceinline__ unsigned long long argmax_key(float v, int index)
{
    const unsigned u = __float_as_uint(v);
    const unsigned ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)ordered << 32) | (unsigned)(0xffffffffu - (unsigned)index);
}

// Lane 0's results of modes 0, 2 and 4 for rows r0 and r0 + 1 (r0 and r0 + rows for SwiGLU) of one activation row.
template <int MODE>
__device__ __forceinline__ void gemv_store(float* yt, int r0, int rows, float s0, float s1, unsigned long long* best)
{
    if (MODE == 4)
    {
        yt[r0] = s0;
        unsigned long long key = s0 == s0 ? argmax_key(s0, r0) : 0ull; // NaN never wins (as in argmax)
        if (r0 + 1 < rows)
        {
            yt[r0 + 1] = s1;
            if (s1 == s1) { const unsigned long long k1 = argmax_key(s1, r0 + 1); key = k1 > key ? k1 : key; }
        }
        if (key != 0ull) atomicMax(best, key);
    }
    else if (MODE == 2) yt[r0] = s0 / (1.0f + expf(-s0)) * s1;
    else { yt[r0] = s0; if (r0 + 1 < rows) yt[r0 + 1] = s1; }
}

// One 16-byte vector i of the two rows against the NT activation rows (norm folded in when NORM).
template <class W, int NT, bool NORM>
__device__ __forceinline__ void gemv_step(uint4 wv0, uint4 wv1, const float* __restrict__ x, const float* __restrict__ nw, int i, int cols,
    float* a0, float* a1, float* ss)
{
    float f0[W::Vec], f1[W::Vec];
    W::unpack(wv0, f0);
    W::unpack(wv1, f1);
    float4 nwv[W::Vec / 4];
    if (NORM)
    {
#pragma unroll
        for (int q = 0; q < W::Vec / 4; q++) nwv[q] = __ldg(reinterpret_cast<const float4*>(nw + (long)i * W::Vec) + q);
    }
#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        const float4* xv = reinterpret_cast<const float4*>(x + (long)t * cols + (long)i * W::Vec);
#pragma unroll
        for (int q = 0; q < W::Vec / 4; q++)
        {
            float4 xx = __ldg(xv + q);
            if (NORM)
            {
                ss[t] += xx.x * xx.x + xx.y * xx.y + xx.z * xx.z + xx.w * xx.w;
                xx.x *= nwv[q].x; xx.y *= nwv[q].y; xx.z *= nwv[q].z; xx.w *= nwv[q].w;
            }
            a0[t] += f0[4 * q] * xx.x + f0[4 * q + 1] * xx.y + f0[4 * q + 2] * xx.z + f0[4 * q + 3] * xx.w;
            a1[t] += f1[4 * q] * xx.x + f1[4 * q + 1] * xx.y + f1[4 * q + 2] * xx.z + f1[4 * q + 3] * xx.w;
        }
    }
}

// One 16-byte vector of the two rows against staged activations: xs holds W::Vec / 4 planes of float4, plane q holding
// the q-th float4 of every vector (lane i reads float4 i of a plane: consecutive 16 bytes, no bank conflict).
template <class W>
__device__ __forceinline__ void gemv_step_staged(uint4 wv0, uint4 wv1, const float4* xs, int v, float& a0, float& a1)
{
    float f0[W::Vec], f1[W::Vec];
    W::unpack(wv0, f0);
    W::unpack(wv1, f1);
#pragma unroll
    for (int q = 0; q < W::Vec / 4; q++)
    {
        const float4 xx = xs[q * (GEMV_STAGE / W::Vec) + v];
        a0 += f0[4 * q] * xx.x + f0[4 * q + 1] * xx.y + f0[4 * q + 2] * xx.z + f0[4 * q + 3] * xx.w;
        a1 += f1[4 * q] * xx.x + f1[4 * q + 1] * xx.y + f1[4 * q + 2] * xx.z + f1[4 * q + 3] * xx.w;
    }
}

// Stages columns [c0, c0 + GEMV_STAGE) of x * nw (one row) into xs by every thread of the block, adding x^2 into ss.
template <class W>
__device__ __forceinline__ void gemv_stage(const float* __restrict__ x, const float* __restrict__ nw, int c0, int cols, float4* xs, float& ss)
{
    constexpr int P = W::Vec / 4;
    const int n4 = min(GEMV_STAGE, cols - c0) / 4;
    for (int f = threadIdx.x; f < n4; f += blockDim.x)
    {
        float4 xx = __ldg(reinterpret_cast<const float4*>(x + c0) + f);
        const float4 g = __ldg(reinterpret_cast<const float4*>(nw + c0) + f);
        ss += xx.x * xx.x + xx.y * xx.y + xx.z * xx.z + xx.w * xx.w;
        xx.x *= g.x; xx.y *= g.y; xx.z *= g.z; xx.w *= g.w;
        xs[(f % P) * (GEMV_STAGE / W::Vec) + f / P] = xx;
    }
}

template <class W, int NT, int MODE, bool NORM, class RA = RopeAppend>
__device__ __forceinline__ void gemv(const typename W::T* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
    const float* __restrict__ nw, float eps, int rows, int cols, int ksplit, RA ra = RA(), unsigned long long* best = nullptr)
{
    int warp = (int)((blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    int part = 0;
    if (MODE == 1) { part = warp % ksplit; warp /= ksplit; }
    int r0, r1;
    bool active;
    int pair_head = 0, pair_dim = 0;
    if (MODE == 2)
    {
        active = warp < rows;
        r0 = warp;
        r1 = warp + rows;
    }
    else if (MODE == 3)
    {
        const int half = ra.hd / 2;
        active = warp < rows / 2;
        pair_head = warp / half;
        pair_dim = warp % half;
        r0 = pair_head * ra.hd + (ra.interleaved ? 2 * pair_dim : pair_dim);
        r1 = r0 + (ra.interleaved ? 1 : half);
        if (!active) { r0 = 0; r1 = 0; }
    }
    else
    {
        r0 = 2 * warp;
        active = r0 < rows;
        r1 = min(r0 + 1, rows - 1);
    }
    const typename W::T* w0 = w + (long)r0 * cols;
    const typename W::T* w1 = w + (long)r1 * cols;
    const bool vectorized = cols % W::Vec == 0;
    const int nv = cols / W::Vec;
    const int per_part = vectorized ? (nv + ksplit - 1) / ksplit : (cols + ksplit - 1) / ksplit;
    const int begin = part * per_part;
    const int end = min(vectorized ? nv : cols, (part + 1) * per_part);
    // Rows start 16-byte aligned: cols is a multiple of the vector width and buffers are 256-byte aligned.
    const uint4* v0 = reinterpret_cast<const uint4*>(w0);
    const uint4* v1 = reinterpret_cast<const uint4*>(w1);
    uint4 pre0[GEMV_PREFETCH], pre1[GEMV_PREFETCH];
    if (vectorized && active)
    {
#pragma unroll
        for (int k = 0; k < GEMV_PREFETCH; k++)
        {
            const int i = begin + lane + 32 * k;
            if (i < end) { pre0[k] = load_stream(v0 + i); pre1[k] = load_stream(v1 + i); }
        }
    }
    pdl_wait();
    // NORM over one row stages the normed activations (every thread of the block takes part, active or not).
    constexpr bool STAGED = NORM && NT == 1;
    if constexpr (STAGED)
    {
        if (vectorized)
        {
            float4* xs = RA::stage();
            typename RA::Early early{};
            if (MODE == 3 && active) early = ra.early(pair_head, pair_dim);
            float a0 = 0.0f, a1 = 0.0f, ss = 0.0f;
            constexpr int SV = GEMV_STAGE / W::Vec; // vectors a stage holds
            // The first stage, then the prefetched vectors (unrolled: the register arrays stay registers; a stage holds
            // more than 32 * GEMV_PREFETCH vectors) and the rest of the stage's.
            gemv_stage<W>(x, nw, 0, cols, xs, ss);
            __syncthreads();
            if (active)
            {
#pragma unroll
                for (int k = 0; k < GEMV_PREFETCH; k++)
                    if (lane + 32 * k < end) gemv_step_staged<W>(pre0[k], pre1[k], xs, lane + 32 * k, a0, a1);
#pragma unroll 4
                for (int i = lane + 32 * GEMV_PREFETCH; i < min(nv, SV); i += 32)
                    gemv_step_staged<W>(load_stream(v0 + i), load_stream(v1 + i), xs, i, a0, a1);
            }
            for (int c0 = GEMV_STAGE; c0 < cols; c0 += GEMV_STAGE) // wider rows, a stage at a time
            {
                __syncthreads(); // every warp is done with the last stage
                gemv_stage<W>(x, nw, c0, cols, xs, ss);
                __syncthreads();
                if (!active) continue;
                const int first = c0 / W::Vec, hi = min(nv, first + SV);
#pragma unroll 4
                for (int i = first + lane; i < hi; i += 32) gemv_step_staged<W>(load_stream(v0 + i), load_stream(v1 + i), xs, i - first, a0, a1);
            }
            pdl_trigger(); // the next kernel's blocks may take this one's place as its warps finish
            const float inv = 1.0f / sqrtf(block_sum(ss) / cols + eps);
            if (!active) return;
            const float s0 = warp_sum(a0) * inv, s1 = warp_sum(a1) * inv;
            if (lane == 0)
            {
                if constexpr (MODE == 3) ra.pair(pair_head, pair_dim, s0, s1, early);
                else gemv_store<MODE>(y, r0, rows, s0, s1, best);
            }
            if constexpr (MODE == 3) ra.finish(pair_head, early);
            return;
        }
    }
    if (!active) { pdl_trigger(); return; }
    typename RA::Early early{};
    if constexpr (MODE == 3) early = ra.early(pair_head, pair_dim);

    float a0[NT], a1[NT], ss[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) { a0[t] = 0.0f; a1[t] = 0.0f; ss[t] = 0.0f; }

    if (vectorized && !STAGED) // (a staged product took its vectorized rows above)
    {
        // The prefetched vectors first (unrolled: the register arrays stay registers), then the rest.
#pragma unroll
        for (int k = 0; k < GEMV_PREFETCH; k++)
        {
            const int i = begin + lane + 32 * k;
            if (i < end) gemv_step<W, NT, NORM>(pre0[k], pre1[k], x, nw, i, cols, a0, a1, ss);
        }
#pragma unroll 4
        for (int i = begin + lane + 32 * GEMV_PREFETCH; i < end; i += 32)
            gemv_step<W, NT, NORM>(load_stream(v0 + i), load_stream(v1 + i), x, nw, i, cols, a0, a1, ss);
    }
    else
    {
        for (int c = begin + lane; c < end; c += 32)
        {
            const float f0 = W::get(w0, c), f1 = W::get(w1, c);
            const float g = NORM ? nw[c] : 1.0f;
#pragma unroll
            for (int t = 0; t < NT; t++)
            {
                const float xx = x[(long)t * cols + c];
                if (NORM) ss[t] += xx * xx;
                a0[t] += f0 * xx * g;
                a1[t] += f1 * xx * g;
            }
        }
    }
    pdl_trigger(); // the next kernel's blocks may take this one's place as its warps finish
#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        float s0 = warp_sum(a0[t]), s1 = warp_sum(a1[t]);
        if (NORM)
        {
            const float inv = 1.0f / sqrtf(warp_sum(ss[t]) / cols + eps);
            s0 *= inv;
            s1 *= inv;
        }
        if (lane != 0) continue;
        if constexpr (MODE == 3) ra.pair(pair_head, pair_dim, s0, s1, early);
        else if (MODE == 1)
        {
            float* yt = y + (long)t * rows;
            if (ksplit == 1) { yt[r0] += s0; if (r0 + 1 < rows) yt[r0 + 1] += s1; }
            else { atomicAdd(yt + r0, s0); if (r0 + 1 < rows) atomicAdd(yt + r0 + 1, s1); }
        }
        else gemv_store<MODE>(y + (long)t * rows, r0, rows, s0, s1, best ? best + t : nullptr);
    }
    if constexpr (MODE == 3) ra.finish(pair_head, early);
}

