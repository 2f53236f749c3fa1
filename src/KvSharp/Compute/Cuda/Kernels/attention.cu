// Flash-decoding attention over a float16 KV cache laid out per layer as [kv_heads, capacity, hd].
// Block (split, kv head, query row) of attn_gG (G = query heads per KV head) scores one chunk of the
// sequence for all G query heads that share the KV head (K and V are read once per group) and writes
// the chunk's unnormalized output with its max and sum; the last block of a (row, kv head) to finish
// (counted atomically) merges all chunks into the output, so one launch does the whole attention.
// Query row t sits at position *pos + t and sees positions 0 .. *pos + t (causal); with seq_stride
// != 0 the rows are separate sequences instead (batch decode): row t reads the cache at
// t * seq_stride elements further and sits at position pos[t].
// attn_gG is the general kernel (any head dimension; multiples of 64 take 16-byte loads); attn_hD_gG
// below streams head dimensions 64 and 128 faster; flash_hD is the tensor-core prefill.
#include "common.cuh"

// One chunk [j0, j1) of the sequence for the G query heads of KV head kvh, query row t.
template <int G>
__device__ __forceinline__ void chunk_attention(
    const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc, float* part_out, float* part_ml,
    float* qs, float* ov, float* sc, long first, int heads, int hd, int capacity, int t, int kvh, int j0, int j1, int chunk, int splits, float scale)
{
    const float* qb = q + ((long)t * heads + (long)kvh * G) * hd;
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x) { qs[i] = qb[i] * scale; ov[i] = 0.0f; }
    __syncthreads();

    const int n = j1 - j0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const u16* kb = kc + ((long)kvh * capacity + j0) * hd;
    const u16* vb = vc + ((long)kvh * capacity + j0) * hd;
    const bool vec = (hd & 63) == 0;

    if (vec)
    {
        // Scores: 8 lanes per key (4 keys per warp pass), each lane 16-byte loads of 8 float16.
        const int sub = lane & 7, kk = lane >> 3;
        for (int jb = warp * 4; jb < n; jb += warps * 4)
        {
            const int j = jb + kk;
            float acc[G];
#pragma unroll
            for (int g = 0; g < G; g++) acc[g] = 0.0f;
            if (j < n)
            {
                const uint4* kr = reinterpret_cast<const uint4*>(kb + (long)j * hd);
                for (int c = sub; c < hd / 8; c += 8)
                {
                    float kf[8];
                    WeightF16::unpack(load_stream(kr + c), kf);
#pragma unroll
                    for (int g = 0; g < G; g++)
                    {
                        const float4 qa = reinterpret_cast<const float4*>(qs + g * hd)[2 * c];
                        const float4 qb2 = reinterpret_cast<const float4*>(qs + g * hd)[2 * c + 1];
                        acc[g] += kf[0] * qa.x + kf[1] * qa.y + kf[2] * qa.z + kf[3] * qa.w
                                + kf[4] * qb2.x + kf[5] * qb2.y + kf[6] * qb2.z + kf[7] * qb2.w;
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < G; g++)
            {
                float s = acc[g];
                s += __shfl_xor_sync(0xffffffffu, s, 4);
                s += __shfl_xor_sync(0xffffffffu, s, 2);
                s += __shfl_xor_sync(0xffffffffu, s, 1);
                if (j < n && sub == 0) sc[g * chunk + j] = s;
            }
        }
    }
    else
    {
        // Scores: one warp per key, lanes over pairs of dimensions.
        const int pairs = hd / 2;
        for (int j = warp; j < n; j += warps)
        {
            const unsigned* kr = reinterpret_cast<const unsigned*>(kb + (long)j * hd);
            float acc[G];
#pragma unroll
            for (int g = 0; g < G; g++) acc[g] = 0.0f;
            for (int p = lane; p < pairs; p += 32)
            {
                const unsigned kk2 = __ldg(kr + p);
                const float k0 = f16_to_f32((u16)(kk2 & 0xffffu)), k1 = f16_to_f32((u16)(kk2 >> 16));
#pragma unroll
                for (int g = 0; g < G; g++) acc[g] += qs[g * hd + 2 * p] * k0 + qs[g * hd + 2 * p + 1] * k1;
            }
#pragma unroll
            for (int g = 0; g < G; g++)
            {
                const float s = warp_sum(acc[g]);
                if (lane == 0) sc[g * chunk + j] = s;
            }
        }
    }
    __syncthreads();

    // Softmax statistics of the chunk, one warp per query head.
    for (int g = warp; g < G; g += warps)
    {
        float m = neg_inf();
        for (int j = lane; j < n; j += 32) m = fmaxf(m, sc[g * chunk + j]);
        m = warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < n; j += 32) { const float e = expf(sc[g * chunk + j] - m); sc[g * chunk + j] = e; l += e; }
        l = warp_sum(l);
        if (lane == 0) { part_ml[(first + (long)g * splits) * 2] = m; part_ml[(first + (long)g * splits) * 2 + 1] = l; }
    }
    __syncthreads();

    if (vec && hd / 8 <= (int)blockDim.x)
    {
        // Values: hd/8 threads cover a row (8 dimensions each, one 16-byte load); blockDim/(hd/8) rows at a time.
        const int per_row = hd / 8, rows_at_once = blockDim.x / per_row;
        const int kg = threadIdx.x / per_row, dv = threadIdx.x % per_row;
        if (kg < rows_at_once)
        {
            float acc[G][8];
#pragma unroll
            for (int g = 0; g < G; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] = 0.0f;
#pragma unroll 2
            for (int j = kg; j < n; j += rows_at_once)
            {
                float vf[8];
                WeightF16::unpack(load_stream(reinterpret_cast<const uint4*>(vb + (long)j * hd) + dv), vf);
#pragma unroll
                for (int g = 0; g < G; g++)
                {
                    const float p = sc[g * chunk + j];
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[g][e] += p * vf[e];
                }
            }
#pragma unroll
            for (int g = 0; g < G; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) atomicAdd(&ov[g * hd + dv * 8 + e], acc[g][e]);
        }
    }
    else
    {
        for (int d = threadIdx.x; d < hd; d += blockDim.x)
        {
            float acc[G];
#pragma unroll
            for (int g = 0; g < G; g++) acc[g] = 0.0f;
            for (int j = 0; j < n; j++)
            {
                const float v = f16_to_f32(vb[(long)j * hd + d]);
#pragma unroll
                for (int g = 0; g < G; g++) acc[g] += sc[g * chunk + j] * v;
            }
#pragma unroll
            for (int g = 0; g < G; g++) ov[g * hd + d] = acc[g];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x) part_out[(first + (long)(i / hd) * splits) * hd + i % hd] = ov[i];
}

template <int G>
__device__ __forceinline__ void attention(
    const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
    float* part_out, float* part_ml, int* counters, float* __restrict__ out,
    int heads, int kv_heads, int hd, int capacity, const int* pos, int chunk, int splits, float scale, long seq_stride)
{
    pdl_wait();
    pdl_trigger();
    const int split = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;
    const bool batch = seq_stride != 0;
    const int visible = (batch ? pos[t] : *pos + t) + 1;
    if (batch) { kc += t * seq_stride; vc += t * seq_stride; }
    const int j0 = split * chunk;
    const int j1 = min(j0 + chunk, visible);
    extern __shared__ float4 smem4[];
    float* qs = reinterpret_cast<float*>(smem4); // [G, hd], pre-scaled
    float* ov = qs + G * hd;                     // [G, hd] value accumulators
    float* sc = ov + G * hd;                     // [G, chunk] scores, then probabilities
    const long first = ((long)t * heads + (long)kvh * G) * splits + split; // (t, head kvh*G, split)

    if (j0 >= j1)
    {
        // Past the causal limit: an empty chunk the merge skips.
        for (int i = threadIdx.x; i < G; i += blockDim.x) { part_ml[(first + (long)i * splits) * 2] = neg_inf(); part_ml[(first + (long)i * splits) * 2 + 1] = 0.0f; }
    }
    else
    {
        chunk_attention<G>(q, kc, vc, part_out, part_ml, qs, ov, sc, first, heads, hd, capacity, t, kvh, j0, j1, chunk, splits, scale);
    }

    // Chunk weights go to the score area (the planner keeps splits <= chunk).
    merge_splits(part_out, part_ml, counters, out, sc, chunk, G, hd, heads, kv_heads, splits, t, kvh);
}

// pfa/pfn_a, pfb/pfn_b: device memory the next kernels read, asked of L2 before the wait (prefetch_l2; 0 bytes: none).
#define ATTN(G) \
    extern "C" __global__ void __launch_bounds__(128) attn_g##G(const float* q, const u16* kc, const u16* vc, float* po, float* pml, int* counters, \
        float* out, int heads, int kv_heads, int hd, int capacity, const int* pos, int chunk, int splits, float scale, long seq_stride, \
        const void* pfa, long pfn_a, const void* pfb, long pfn_b) \
    { \
        prefetch_l2(pfa, pfn_a, pfb, pfn_b); \
        attention<G>(q, kc, vc, po, pml, counters, out, heads, kv_heads, hd, capacity, pos, chunk, splits, scale, seq_stride); \
    }
ATTN(1) ATTN(2) ATTN(3) ATTN(4) ATTN(5) ATTN(6) ATTN(7) ATTN(8) ATTN(16)

// ---------------------------------------------------------------------------------------------------
// Streaming decode attention for head dimensions 64 and 128 (attn_hHD_gG). Block (split, kv head, row)
// of 4 warps takes an equal share of the visible keys (the chunk is computed here from the position, so
// a graph captured for a large capacity still spreads a short context over every block). L = HD/8 lanes
// hold one key's 8 dimensions each: a warp step covers 32/L keys, and U steps' K and V loads (16 keys,
// 8 when G > 4 to bound registers) are issued before any is used, so each warp keeps U·2 16-byte loads
// per lane in flight without a dependent chain.
// Each lane group keeps an online softmax (running max, sum, 8 output dimensions per head) in registers;
// groups, then warps, then chunks are merged. Scores are in log2 units (the query is pre-scaled by log2 e).
constexpr float LOG2E = 1.4426950408889634f;
constexpr int STREAM_WARPS = 4;
constexpr int STREAM_MAX_SPLITS = 128;

// Merges online-softmax state (m, l, acc) with another's: both may be empty (m = -inf).
__device__ __forceinline__ void merge_state(float& m, float& l, float* acc, float mo, float lo, const float* acco)
{
    const float mn = fmaxf(m, mo);
    const float a = m == neg_inf() ? 0.0f : exp2f(m - mn);
    const float b = mo == neg_inf() ? 0.0f : exp2f(mo - mn);
    l = l * a + lo * b;
#pragma unroll
    for (int e = 0; e < 8; e++) acc[e] = acc[e] * a + acco[e] * b;
    m = mn;
}

// One warp step's keys and values: U slots of KPW keys from jb on (past j1: re-reads the last valid key, masked later).
// policy: l2_evict_first, so the streamed cache does not push lines still to be read out of L2.
template <int HD, int U, int KPW>
__device__ __forceinline__ void load_tile(const u16* kb, const u16* vb, int jb, int j1, int slot, int sub, uint4* kr, uint4* vr,
    unsigned long long policy)
{
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        const int j = min(jb + u * KPW + slot, j1 - 1);
        kr[u] = load_stream(kb + (long)j * HD + sub * 8, policy);
        vr[u] = load_stream(vb + (long)j * HD + sub * 8, policy);
    }
}

// PIPE: the next step's loads are issued before this step's arithmetic (registers double-buffered), so a warp
// always has a step of loads in flight instead of alternating between loading and computing.
template <int HD, int G, bool PIPE>
__device__ __forceinline__ void attention_stream(
    const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
    float* part_out, float* part_ml, int* counters, float* __restrict__ out,
    int heads, int kv_heads, int capacity, const int* pos, int splits, float scale, long seq_stride,
    const void* pfa, long pfn_a, const void* pfb, long pfn_b)
{
    constexpr int L = HD / 8, KPW = 32 / L, U = (G <= 4 ? 16 : 8) / KPW, TILE = U * KPW;
    __shared__ float sm_m[STREAM_WARPS][G], sm_l[STREAM_WARPS][G];
    __shared__ float4 sm_acc4[STREAM_WARPS * G * HD / 4];
    __shared__ float wts[G][STREAM_MAX_SPLITS];
    float* sm_acc = reinterpret_cast<float*>(sm_acc4);

    // Everything up to the first K/V loads only reads what earlier decode steps wrote (the positions, the cache below
    // this call's first position), so it runs before pdl_wait: under programmatic launch the first loads overlap the
    // previous kernel's tail (that kernel appends this call's keys and values and writes the queries).
    const int split = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;
    const bool batch = seq_stride != 0;
    const int stable = batch ? pos[t] : pos[0]; // positions below it were in the cache before this step
    const int visible = (batch ? pos[t] : pos[0] + t) + 1;
    const long seq = batch ? t * seq_stride : 0;
    const u16* kb = kc + seq + (long)kvh * capacity * HD;
    const u16* vb = vc + seq + (long)kvh * capacity * HD;
    const int chunk = ((visible + splits - 1) / splits + 15) & ~15;
    const int j0 = split * chunk, j1 = min(j0 + chunk, visible);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane % L, slot = lane / L;
    const long head0 = (long)t * heads + (long)kvh * G; // first query head of the group, row t
    constexpr int STEP = STREAM_WARPS * TILE;
    const int jw = j0 + warp * TILE; // this warp's first key
    uint4 kr[U], vr[U];
    const unsigned long long policy = l2_evict_first();
    const bool early = PIPE && jw < j1 && min(jw + TILE, j1) <= stable; // the first step reads no new key
    if (early) load_tile<HD, U, KPW>(kb, vb, jw, j1, slot, sub, kr, vr, policy);
    prefetch_l2(pfa, pfn_a, pfb, pfn_b); // after this block's first K/V requests: they are the ones it waits for
    pdl_wait();
    if (PIPE && jw < j1 && !early) load_tile<HD, U, KPW>(kb, vb, jw, j1, slot, sub, kr, vr, policy);

    float qf[G][8], acc[G][8], m[G], l[G];
#pragma unroll
    for (int g = 0; g < G; g++)
    {
        const float4* qv = reinterpret_cast<const float4*>(q + (head0 + g) * HD + sub * 8);
        const float4 a = qv[0], b = qv[1];
        const float sc = scale * LOG2E;
        qf[g][0] = a.x * sc; qf[g][1] = a.y * sc; qf[g][2] = a.z * sc; qf[g][3] = a.w * sc;
        qf[g][4] = b.x * sc; qf[g][5] = b.y * sc; qf[g][6] = b.z * sc; qf[g][7] = b.w * sc;
        m[g] = neg_inf();
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.0f;
    }

    for (int jb = jw; jb < j1; jb += STEP)
    {
        uint4 kn[U], vn[U];
        if (!PIPE) load_tile<HD, U, KPW>(kb, vb, jb, j1, slot, sub, kr, vr, policy);
        else if (jb + STEP < j1) load_tile<HD, U, KPW>(kb, vb, jb + STEP, j1, slot, sub, kn, vn, policy);
        float s[U][G];
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            float kf[8];
            WeightF16::unpack(kr[u], kf);
            const bool valid = jb + u * KPW + slot < j1;
#pragma unroll
            for (int g = 0; g < G; g++)
            {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += qf[g][e] * kf[e];
#pragma unroll
                for (int o = L / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                s[u][g] = valid ? d : neg_inf();
            }
        }
        float alpha[G];
#pragma unroll
        for (int g = 0; g < G; g++)
        {
            float mt = s[0][g];
#pragma unroll
            for (int u = 1; u < U; u++) mt = fmaxf(mt, s[u][g]);
            const float mn = fmaxf(m[g], mt);
            // mn = -inf only when this lane group has seen no valid key yet: keep the empty state.
            alpha[g] = mn == neg_inf() ? 1.0f : exp2f(m[g] - mn);
#pragma unroll
            for (int u = 0; u < U; u++) s[u][g] = mn == neg_inf() ? 0.0f : exp2f(s[u][g] - mn);
            m[g] = mn;
            l[g] *= alpha[g];
#pragma unroll
            for (int u = 0; u < U; u++) l[g] += s[u][g];
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] *= alpha[g];
        }
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            float vf[8];
            WeightF16::unpack(vr[u], vf);
#pragma unroll
            for (int g = 0; g < G; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] += s[u][g] * vf[e];
        }
        if (PIPE)
        {
#pragma unroll
            for (int u = 0; u < U; u++) { kr[u] = kn[u]; vr[u] = vn[u]; }
        }
    }

    pdl_trigger();
    // Merge the key slots of the warp (lanes with the same dimensions, L apart)...
#pragma unroll
    for (int o = L; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < G; g++)
        {
            float ao[8];
#pragma unroll
            for (int e = 0; e < 8; e++) ao[e] = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
            const float mo = __shfl_xor_sync(0xffffffffu, m[g], o), lo = __shfl_xor_sync(0xffffffffu, l[g], o);
            merge_state(m[g], l[g], acc[g], mo, lo, ao);
        }
    // ...then the warps, through shared memory.
    if (slot == 0)
    {
#pragma unroll
        for (int g = 0; g < G; g++)
        {
            float4* dst = reinterpret_cast<float4*>(sm_acc + (warp * G + g) * HD + sub * 8);
            dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
            if (sub == 0) { sm_m[warp][g] = m[g]; sm_l[warp][g] = l[g]; }
        }
    }
    __syncthreads();
    const long first = head0 * splits + split; // (row t, head kvh*G, split); head g is g*splits further
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x)
    {
        const int g = i / HD, d = i % HD;
        float mm = neg_inf();
#pragma unroll
        for (int w = 0; w < STREAM_WARPS; w++) mm = fmaxf(mm, sm_m[w][g]);
        float ll = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < STREAM_WARPS; w++)
        {
            const float f = sm_m[w][g] == neg_inf() ? 0.0f : exp2f(sm_m[w][g] - mm);
            ll += sm_l[w][g] * f;
            o += sm_acc[(w * G + g) * HD + d] * f;
        }
        if (splits == 1) out[(head0 + g) * HD + d] = o / ll;
        else
        {
            part_out[(first + (long)g * splits) * HD + d] = o;
            if (d == 0) { part_ml[(first + (long)g * splits) * 2] = mm; part_ml[(first + (long)g * splits) * 2 + 1] = ll; }
        }
    }
    if (splits == 1) return;

    // The last block of this (row, kv head) to finish merges the chunks (scores in log2 units), its first 16 chunks' loads
    // (8 where a thread has two outputs) issued at once. More (32 of a batch-1 grid's 33) cost the block loop registers:
    // 1529 to 1568 instructions (NVRTC 12.4).
    merge_splits_early<G, HD, (G * HD / 4 <= 128 ? 16 : 8), true>(part_out, part_ml, counters, out, &wts[0][0], STREAM_MAX_SPLITS, splits,
        heads, kv_heads, t, kvh, splits);
}

#define ATTN_STREAM_ARGS const float* q, const u16* kc, const u16* vc, float* po, float* pml, int* counters, float* out, int heads, \
    int kv_heads, int capacity, const int* pos, int splits, float scale, long seq_stride, const void* pfa, long pfn_a, const void* pfb, long pfn_b
#define ATTN_STREAM_CALL(HD, G, PIPE) attention_stream<HD, G, PIPE>(q, kc, vc, po, pml, counters, out, heads, kv_heads, capacity, pos, splits, scale, \
    seq_stride, pfa, pfn_a, pfb, pfn_b)
#define ATTN_STREAM(HD, G) \
    extern "C" __global__ void __launch_bounds__(128) attn_h##HD##_g##G(ATTN_STREAM_ARGS) { ATTN_STREAM_CALL(HD, G, true); } \
    extern "C" __global__ void __launch_bounds__(128) attn_h##HD##_g##G##_serial(ATTN_STREAM_ARGS) { ATTN_STREAM_CALL(HD, G, false); }
ATTN_STREAM(128, 1) ATTN_STREAM(128, 2) ATTN_STREAM(128, 3) ATTN_STREAM(128, 4) ATTN_STREAM(128, 5) ATTN_STREAM(128, 6) ATTN_STREAM(128, 7) ATTN_STREAM(128, 8)
ATTN_STREAM(64, 1) ATTN_STREAM(64, 2) ATTN_STREAM(64, 3) ATTN_STREAM(64, 4) ATTN_STREAM(64, 5) ATTN_STREAM(64, 6) ATTN_STREAM(64, 7) ATTN_STREAM(64, 8)

// ---------------------------------------------------------------------------------------------------
// Prefill attention on float16 tensor cores (FlashAttention-2 style), flash_hHD. Block (query tile,
// head) of 4 warps takes 64 query rows of one sequence (row r at position *pos + r, causal over the
// cache, which already holds this chunk's keys); each warp owns 16 rows. Key/value tiles of 64 rows
// stream through shared memory with cp.async, double-buffered. S = Q·Kᵀ and O += P·V are
// mma.sync.m16n8k16 (f16 operands, f32 accumulators); the online softmax works on the accumulator
// fragments, and P goes from the S accumulators straight into the A operand of P·V.
constexpr int FLASH_BQ = 64, FLASH_BK = 64;

__device__ __forceinline__ unsigned smem_addr(const void* p)
{
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(smem_addr(dst)), "l"(src) : "memory");
}

__device__ __forceinline__ unsigned pack_f16(float lo, float hi)
{
    return (unsigned)f32_to_f16(lo) | ((unsigned)f32_to_f16(hi) << 16);
}

__device__ __forceinline__ void mma_f16(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared memory of one flash block: K and V tiles, two stages each, rows padded by 16 bytes.
__host__ __device__ constexpr int flash_stride(int hd) { return hd + 8; }

template <int HD>
__device__ __forceinline__ void flash_prefill(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
    float* __restrict__ out, int n, int heads, int group, int capacity, const int* pos, float scale)
{
    constexpr int ST = flash_stride(HD), KT = HD / 16, NT = HD / 8, ST_TILES = FLASH_BK / 8;
    extern __shared__ float4 smem4[];
    u16* ks = reinterpret_cast<u16*>(smem4);   // [2][BK][ST]
    u16* vs = ks + 2 * FLASH_BK * ST;           // [2][BK][ST]
    pdl_wait();
    pdl_trigger();

    const int qt = gridDim.x - 1 - blockIdx.x; // the longest (last) query tiles first
    const int h = blockIdx.y, kvh = h / group;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int p0 = *pos;
    const int r0 = qt * FLASH_BQ + warp * 16;
    const int kend = p0 + min(qt * FLASH_BQ + FLASH_BQ, n);   // keys the block needs: 0 .. kend-1
    const u16* kb = kc + (long)kvh * capacity * HD;
    const u16* vb = vc + (long)kvh * capacity * HD;

    // Rows past n compute row n-1 again (never stored), so no position sees an unwritten key.
    const int ra = min(r0 + g, n - 1), rb = min(r0 + g + 8, n - 1);
    const int pa = p0 + ra, pb = p0 + rb;
    const int warp_min = p0 + min(r0, n - 1), warp_max = p0 + min(r0 + 15, n - 1);
    unsigned qa[KT][4];
    {
        const float sc = scale * LOG2E;
        const float* qra = q + ((long)ra * heads + h) * HD;
        const float* qrb = q + ((long)rb * heads + h) * HD;
#pragma unroll
        for (int kk = 0; kk < KT; kk++)
        {
            const int c = kk * 16 + 2 * tq;
            qa[kk][0] = pack_f16(qra[c] * sc, qra[c + 1] * sc);
            qa[kk][1] = pack_f16(qrb[c] * sc, qrb[c + 1] * sc);
            qa[kk][2] = pack_f16(qra[c + 8] * sc, qra[c + 9] * sc);
            qa[kk][3] = pack_f16(qrb[c + 8] * sc, qrb[c + 9] * sc);
        }
    }

    float o[NT][4];
#pragma unroll
    for (int i = 0; i < NT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = neg_inf(), m1 = neg_inf(), l0 = 0.0f, l1 = 0.0f;

    const int ntiles = (kend + FLASH_BK - 1) / FLASH_BK;
    auto load_tile = [&](int tile, int stage)
    {
        constexpr int CHUNKS = HD / 8; // 16-byte pieces per row
        for (int c = threadIdx.x; c < FLASH_BK * CHUNKS; c += blockDim.x)
        {
            const int row = c / CHUNKS, col = (c % CHUNKS) * 8;
            const long j = min(tile * FLASH_BK + row, kend - 1);
            cp_async16(ks + (stage * FLASH_BK + row) * ST + col, kb + j * HD + col);
            cp_async16(vs + (stage * FLASH_BK + row) * ST + col, vb + j * HD + col);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    };

    load_tile(0, 0);
    for (int tile = 0; tile < ntiles; tile++)
    {
        const int stage = tile & 1;
        if (tile + 1 < ntiles)
        {
            load_tile(tile + 1, stage ^ 1);
            asm volatile("cp.async.wait_group 1;" ::: "memory");
        }
        else asm volatile("cp.async.wait_group 0;" ::: "memory");
        __syncthreads();
        const int k0 = tile * FLASH_BK;
        if (k0 <= warp_max)
        {
            const u16* kt = ks + stage * FLASH_BK * ST;
            const u16* vt = vs + stage * FLASH_BK * ST;
            float s[ST_TILES][4];
#pragma unroll
            for (int nt = 0; nt < ST_TILES; nt++)
            {
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
                const u16* krow = kt + (nt * 8 + g) * ST + 2 * tq;
#pragma unroll
                for (int kk = 0; kk < KT; kk++)
                {
                    const unsigned b0 = *reinterpret_cast<const unsigned*>(krow + kk * 16);
                    const unsigned b1 = *reinterpret_cast<const unsigned*>(krow + kk * 16 + 8);
                    mma_f16(s[nt], qa[kk], b0, b1);
                }
            }
            if (k0 + FLASH_BK - 1 > warp_min) // the diagonal crosses this tile: mask keys past each row's position
            {
#pragma unroll
                for (int nt = 0; nt < ST_TILES; nt++)
                {
                    const int key = k0 + nt * 8 + 2 * tq;
                    if (key > pa) s[nt][0] = neg_inf();
                    if (key + 1 > pa) s[nt][1] = neg_inf();
                    if (key > pb) s[nt][2] = neg_inf();
                    if (key + 1 > pb) s[nt][3] = neg_inf();
                }
            }
            float mx0 = neg_inf(), mx1 = neg_inf();
#pragma unroll
            for (int nt = 0; nt < ST_TILES; nt++)
            {
                mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
                mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            // Key 0 is in the first tile and visible to every row, so the running maxima are finite from then on.
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            const float al0 = exp2f(m0 - mn0), al1 = exp2f(m1 - mn1);
            m0 = mn0;
            m1 = mn1;
            float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < ST_TILES; nt++)
            {
                s[nt][0] = exp2f(s[nt][0] - mn0); s[nt][1] = exp2f(s[nt][1] - mn0);
                s[nt][2] = exp2f(s[nt][2] - mn1); s[nt][3] = exp2f(s[nt][3] - mn1);
                ps0 += s[nt][0] + s[nt][1];
                ps1 += s[nt][2] + s[nt][3];
            }
            l0 = l0 * al0 + ps0;
            l1 = l1 * al1 + ps1;
#pragma unroll
            for (int i = 0; i < NT; i++) { o[i][0] *= al0; o[i][1] *= al0; o[i][2] *= al1; o[i][3] *= al1; }
#pragma unroll
            for (int kk = 0; kk < FLASH_BK / 16; kk++)
            {
                unsigned pa4[4];
                pa4[0] = pack_f16(s[2 * kk][0], s[2 * kk][1]);
                pa4[1] = pack_f16(s[2 * kk][2], s[2 * kk][3]);
                pa4[2] = pack_f16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa4[3] = pack_f16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                // ldmatrix.trans: lane i addresses row i%8 of matrix i/8 = (keys +0/+8, dims +0/+8).
                const int mi = lane >> 3, ri = lane & 7;
                const u16* vrow = vt + (kk * 16 + ri + 8 * (mi & 1)) * ST + 8 * (mi >> 1);
#pragma unroll
                for (int nt = 0; nt < NT; nt += 2)
                {
                    unsigned b0, b1, b2, b3;
                    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                        : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3) : "r"(smem_addr(vrow + nt * 8)));
                    mma_f16(o[nt], pa4, b0, b1);
                    mma_f16(o[nt + 1], pa4, b2, b3);
                }
            }
        }
        __syncthreads(); // every warp is done with this stage before the next iteration refills it
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
    if (r0 + g < n)
    {
        float* dst = out + ((long)(r0 + g) * heads + h) * HD + 2 * tq;
#pragma unroll
        for (int i = 0; i < NT; i++) *reinterpret_cast<float2*>(dst + i * 8) = make_float2(o[i][0] * i0, o[i][1] * i0);
    }
    if (r0 + g + 8 < n)
    {
        float* dst = out + ((long)(r0 + g + 8) * heads + h) * HD + 2 * tq;
#pragma unroll
        for (int i = 0; i < NT; i++) *reinterpret_cast<float2*>(dst + i * 8) = make_float2(o[i][2] * i1, o[i][3] * i1);
    }
}

#define FLASH(HD) \
    extern "C" __global__ void __launch_bounds__(128) flash_h##HD(const float* q, const u16* kc, const u16* vc, float* out, \
        int n, int heads, int group, int capacity, const int* pos, float scale) \
    { flash_prefill<HD>(q, kc, vc, out, n, heads, group, capacity, pos, scale); }
FLASH(64) FLASH(128)
