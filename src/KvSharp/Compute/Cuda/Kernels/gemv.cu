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
//           cache at the device-side position (no separate qkv_rope_append launch).
// NORM (modes 0, 2 and 3, whole rows per warp): x is the raw residual stream and the product is taken
// with RMSNorm(x) * nw, the norm fused in: the loop multiplies x by nw and sums x^2 on the way, and
// the dot is scaled by 1/sqrt(mean(x^2) + eps) at the end (no separate norm kernel, no normed copy).
// The first GEMV_PREFETCH vectors of each lane's two rows are loaded before pdl_wait: weights do not depend
// on the previous kernel, so under programmatic dependent launch a block that starts while the previous
// kernel drains already has its first loads in flight (no DRAM idle between kernels).
// gemv_mma_* below does the same for 2-8 rows on tensor cores (batch decode).
#include "common.cuh"

constexpr int GEMV_PREFETCH = 4;

// Where MODE 3 puts its results (RoPE + cache append of one decode row).
struct RopeAppend
{
    float* q_out;
    u16* kc;
    u16* vc;
    const float* inv_freq;
    const int* pos;
    int heads, kv_heads, hd, capacity, interleaved;
};

// MODE 4's running greedy choice per activation row: (orderable value bits << 32) | ~index, so the 64-bit
// maximum is the largest value and, among equal values, the first index (the CPU sampler's rule).
__device__ __forceinline__ unsigned long long argmax_key(float v, int index)
{
    const unsigned u = __float_as_uint(v);
    const unsigned ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)ordered << 32) | (unsigned)(0xffffffffu - (unsigned)index);
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

// MODE 3's epilogue: rotation pair (dims of pair_dim) of QKV head pair_head, values x0, x1 (already normed and
// summed). Query heads are rotated into q_out, key heads rotated into the float16 cache, value heads stored as
// they are; the same arithmetic as qkv_rope_append in elementwise.cu.
__device__ __forceinline__ void rope_append_pair(const RopeAppend& ra, int head, int i, float x0, float x1)
{
    const int p = *ra.pos;
    const int i0 = ra.interleaved ? 2 * i : i, i1 = ra.interleaved ? 2 * i + 1 : i + ra.hd / 2;
    if (head >= ra.heads + ra.kv_heads)
    {
        u16* dst = ra.vc + ((long)(head - ra.heads - ra.kv_heads) * ra.capacity + p) * ra.hd;
        dst[i0] = f32_to_f16(x0);
        dst[i1] = f32_to_f16(x1);
        return;
    }
    const float angle = (float)p * ra.inv_freq[i];
    const float c = cosf(angle), s = sinf(angle);
    const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
    if (head < ra.heads)
    {
        float* dst = ra.q_out + (long)head * ra.hd;
        dst[i0] = y0;
        dst[i1] = y1;
    }
    else
    {
        u16* dst = ra.kc + ((long)(head - ra.heads) * ra.capacity + p) * ra.hd;
        dst[i0] = f32_to_f16(y0);
        dst[i1] = f32_to_f16(y1);
    }
}

template <class W, int NT, int MODE, bool NORM>
__device__ __forceinline__ void gemv(const typename W::T* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
    const float* __restrict__ nw, float eps, int rows, int cols, int ksplit, RopeAppend ra = RopeAppend(), unsigned long long* best = nullptr)
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
    if (!active) { pdl_trigger(); return; }

    float a0[NT], a1[NT], ss[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) { a0[t] = 0.0f; a1[t] = 0.0f; ss[t] = 0.0f; }

    if (vectorized)
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
        float* yt = y + (long)t * rows;
        if (MODE == 3) rope_append_pair(ra, pair_head, pair_dim, s0, s1);
        else if (MODE == 4)
        {
            yt[r0] = s0;
            unsigned long long key = s0 == s0 ? argmax_key(s0, r0) : 0ull; // NaN never wins (as in argmax)
            if (r0 + 1 < rows)
            {
                yt[r0 + 1] = s1;
                if (s1 == s1) { const unsigned long long k1 = argmax_key(s1, r0 + 1); key = k1 > key ? k1 : key; }
            }
            if (key != 0ull) atomicMax(best + t, key);
        }
        else if (MODE == 2) yt[r0] = s0 / (1.0f + expf(-s0)) * s1;
        else if (MODE == 1)
        {
            if (ksplit == 1) { yt[r0] += s0; if (r0 + 1 < rows) yt[r0 + 1] += s1; }
            else { atomicAdd(yt + r0, s0); if (r0 + 1 < rows) atomicAdd(yt + r0 + 1, s1); }
        }
        else { yt[r0] = s0; if (r0 + 1 < rows) yt[r0 + 1] = s1; }
    }
}

#define GEMV_ARGS(W) const W::T* w, const float* x, float* y, const float* nw, float eps, int rows, int cols, int ksplit
#define GEMV(NAME, W, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_##NT(GEMV_ARGS(W)) { gemv<W, NT, 0, false>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_norm_##NT(GEMV_ARGS(W)) { gemv<W, NT, 0, true>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_acc_##NT(GEMV_ARGS(W)) { gemv<W, NT, 1, false>(w, x, y, nw, eps, rows, cols, ksplit); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu_##NT(GEMV_ARGS(W)) { gemv<W, NT, 2, false>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu_norm_##NT(GEMV_ARGS(W)) { gemv<W, NT, 2, true>(w, x, y, nw, eps, rows, cols, 1); }
// The fused QKV + RoPE + cache append of one decode row (MODE 3, attention norm fused).
#define GEMV_QKV_ROPE(NAME, W) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_qkv_rope_norm_1(const W::T* w, const float* x, const float* nw, float eps, int rows, \
        int cols, float* q_out, u16* kc, u16* vc, const float* inv_freq, const int* pos, int heads, int kv_heads, int hd, int capacity, int interleaved) \
    { gemv<W, 1, 3, true>(w, x, nullptr, nw, eps, rows, cols, 1, RopeAppend{ q_out, kc, vc, inv_freq, pos, heads, kv_heads, hd, capacity, interleaved }); }
// The output head of decode rows with the final norm, folding the greedy choice into best[t] (MODE 4).
#define GEMV_ARGMAX(NAME, W, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_argmax_norm_##NT(const W::T* w, const float* x, float* y, const float* nw, float eps, \
        int rows, int cols, unsigned long long* best) \
    { gemv<W, NT, 4, true>(w, x, y, nw, eps, rows, cols, 1, RopeAppend(), best); }
#define GEMV_ALL(NAME, W) GEMV_ARGMAX(NAME, W, 1) GEMV_QKV_ROPE(NAME, W) GEMV(NAME, W, 1) GEMV(NAME, W, 2) GEMV(NAME, W, 3) GEMV(NAME, W, 4) GEMV(NAME, W, 5) GEMV(NAME, W, 6) GEMV(NAME, W, 7) GEMV(NAME, W, 8)

GEMV_ALL(gemv_f32, WeightF32)
GEMV_ALL(gemv_bf16, WeightBF16)
GEMV_ALL(gemv_f16, WeightF16)

// ---------------------------------------------------------------------------------------------------
// Tensor-core matrix-vector products for 2..8 activation rows (batch decode), bfloat16 or float16
// weights, cols a multiple of 256. A block of 8 warps owns 16 output rows (SwiGLU: 8 gate rows and
// their 8 up rows) and splits the columns 8 ways; each warp multiplies with mma.m16n8k16: A = 16 weight
// rows straight from global memory (each lane's 16-byte load of 8 consecutive columns of row g and of
// row g + 8 is its A fragment of two k-steps, the k order permuted the same way in A and B, which a dot
// product does not notice), B = the 8 activation rows (rows past nt are zero) rounded to the weight's
// 16-bit type, C in float32. The 8 warps' fragments are summed through shared memory. Every weight byte
// is read once and every activation element is loaded once per 16 weight rows, where the CUDA-core
// kernel above reloads activations per two rows (its L1 traffic limits it to ~1/3 of the bandwidth at 8 rows).
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

template <bool BF16, int MODE, bool NORM>
__device__ __forceinline__ void gemv_mma(const u16* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
    const float* __restrict__ nw, float eps, int rows, int cols, int nt)
{
    __shared__ float4 red[MMA_WARPS][32];
    __shared__ float ssr[MMA_WARPS][8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int rbase = blockIdx.x * (MODE == 2 ? 8 : 16);
    const int ra = min(rbase + g, rows - 1);
    const int rb = MODE == 2 ? ra + rows : min(rbase + g + 8, rows - 1);
    const int kper = cols / MMA_WARPS, k0 = warp * kper;
    const uint4* wa = reinterpret_cast<const uint4*>(w + (long)ra * cols + k0 + tq * 8);
    const uint4* wb = reinterpret_cast<const uint4*>(w + (long)rb * cols + k0 + tq * 8);
    const bool has_row = g < nt;
    const float4* xr = reinterpret_cast<const float4*>(x + (long)(has_row ? g : 0) * cols + k0 + tq * 8);
    const float4* nr = reinterpret_cast<const float4*>(nw + k0 + tq * 8);
    pdl_wait();

    float c[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
    float ss = 0.0f;
    const int steps = kper / 32; // 32 columns per step: 4 lanes x 8
#pragma unroll 4
    for (int s = 0; s < steps; s++)
    {
        const uint4 a = load_stream(wa + s * 4);
        const uint4 b = load_stream(wb + s * 4);
        float4 x0 = __ldg(xr + s * 8), x1 = __ldg(xr + s * 8 + 1);
        if (!has_row) { x0 = make_float4(0.0f, 0.0f, 0.0f, 0.0f); x1 = x0; }
        if (NORM)
        {
            ss += x0.x * x0.x + x0.y * x0.y + x0.z * x0.z + x0.w * x0.w + x1.x * x1.x + x1.y * x1.y + x1.z * x1.z + x1.w * x1.w;
            const float4 n0 = __ldg(nr + s * 8), n1 = __ldg(nr + s * 8 + 1);
            x0.x *= n0.x; x0.y *= n0.y; x0.z *= n0.z; x0.w *= n0.w;
            x1.x *= n1.x; x1.y *= n1.y; x1.z *= n1.z; x1.w *= n1.w;
        }
        mma16816<BF16>(c, a.x, b.x, a.y, b.y, pack_x<BF16>(x0.x, x0.y), pack_x<BF16>(x0.z, x0.w));
        mma16816<BF16>(c, a.z, b.z, a.w, b.w, pack_x<BF16>(x1.x, x1.y), pack_x<BF16>(x1.z, x1.w));
    }
    pdl_trigger();
    red[warp][lane] = make_float4(c[0], c[1], c[2], c[3]);
    if (NORM)
    {
        ss += __shfl_xor_sync(0xffffffffu, ss, 1);
        ss += __shfl_xor_sync(0xffffffffu, ss, 2);
        if (tq == 0) ssr[warp][g] = ss;
    }
    __syncthreads();
    if (warp != 0) return;
    float4 sum = red[0][lane];
#pragma unroll
    for (int i = 1; i < MMA_WARPS; i++) { const float4 v = red[i][lane]; sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w; }
    // C fragment: (row g, activation rows 2tq and 2tq+1) in x, y; (row g + 8, same) in z, w.
    const int t0 = 2 * tq, t1 = 2 * tq + 1;
    float inv0 = 1.0f, inv1 = 1.0f;
    if (NORM)
    {
        float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
        for (int i = 0; i < MMA_WARPS; i++) { s0 += ssr[i][t0]; s1 += ssr[i][t1]; }
        inv0 = 1.0f / sqrtf(s0 / cols + eps);
        inv1 = 1.0f / sqrtf(s1 / cols + eps);
    }
    const float v[4] = { sum.x * inv0, sum.y * inv1, sum.z * inv0, sum.w * inv1 };
    if (MODE == 2)
    {
        const int r = rbase + g;
        if (r >= rows) return;
        if (t0 < nt) y[(long)t0 * rows + r] = v[0] / (1.0f + expf(-v[0])) * v[2];
        if (t1 < nt) y[(long)t1 * rows + r] = v[1] / (1.0f + expf(-v[1])) * v[3];
        return;
    }
#pragma unroll
    for (int h = 0; h < 2; h++)
    {
        const int r = rbase + g + 8 * h;
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

#define GEMV_MMA_ARGS const u16* w, const float* x, float* y, const float* nw, float eps, int rows, int cols, int nt
#define GEMV_MMA(NAME, BF) \
    extern "C" __global__ void __launch_bounds__(256) NAME(GEMV_MMA_ARGS) { gemv_mma<BF, 0, false>(w, x, y, nw, eps, rows, cols, nt); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_norm(GEMV_MMA_ARGS) { gemv_mma<BF, 0, true>(w, x, y, nw, eps, rows, cols, nt); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_acc(GEMV_MMA_ARGS) { gemv_mma<BF, 1, false>(w, x, y, nw, eps, rows, cols, nt); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu(GEMV_MMA_ARGS) { gemv_mma<BF, 2, false>(w, x, y, nw, eps, rows, cols, nt); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu_norm(GEMV_MMA_ARGS) { gemv_mma<BF, 2, true>(w, x, y, nw, eps, rows, cols, nt); }
GEMV_MMA(gemv_mma_bf16, true)
GEMV_MMA(gemv_mma_f16, false)
