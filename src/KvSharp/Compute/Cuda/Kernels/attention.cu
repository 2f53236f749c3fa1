// Flash-decoding attention over a float16 KV cache laid out per layer as [kv_heads, capacity, hd].
// Block (split, kv head, query row) of attn_gG (G = query heads per KV head) scores one chunk of the
// sequence for all G query heads that share the KV head (K and V are read once per group) and writes
// the chunk's unnormalized output with its max and sum; the last block of a (row, kv head) to finish
// (counted atomically) merges all chunks into the output, so one launch does the whole attention.
// Query row t sits at position *pos + t and sees positions 0 .. *pos + t (causal).
// Head dimensions that are multiples of 64 take the vectorized path (16-byte loads, 8 lanes per key
// for scores, 8 dimensions per thread for values); others a scalar one.
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
    int heads, int kv_heads, int hd, int capacity, const int* pos, int chunk, int splits, float scale)
{
    const int split = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;
    const int visible = *pos + t + 1;
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

    // The last block of this (row, kv head) merges the chunks: out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
    __shared__ int is_last;
    __threadfence(); // this block's partial results are visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0)
    {
        const int done = atomicAdd(counters + (long)t * kv_heads + kvh, 1);
        is_last = done == splits - 1;
        if (is_last) counters[(long)t * kv_heads + kvh] = 0; // ready for the next launch
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    // Chunk weights e^(m_s - M) / L per head into the score area (the planner keeps splits <= chunk), one warp per head...
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int g = warp; g < G; g += warps)
    {
        const long base = ((long)t * heads + (long)kvh * G + g) * splits;
        float m = neg_inf();
        for (int s = lane; s < splits; s += 32) m = fmaxf(m, __ldcg(part_ml + (base + s) * 2));
        m = warp_max(m);
        float l = 0.0f;
        for (int s = lane; s < splits; s += 32)
        {
            const float ls = __ldcg(part_ml + (base + s) * 2 + 1);
            const float w = ls == 0.0f ? 0.0f : expf(__ldcg(part_ml + (base + s) * 2) - m);
            sc[g * chunk + s] = w;
            l += ls * w;
        }
        l = warp_sum(l);
        const float inv = 1.0f / l;
        for (int s = lane; s < splits; s += 32) sc[g * chunk + s] *= inv;
    }
    __syncthreads();
    // ...then every output element as independent, coalesced loads of the chunks' partial outputs.
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x)
    {
        const int g = i / hd, d = i % hd;
        const long base = ((long)t * heads + (long)kvh * G + g) * splits;
        float acc = 0.0f;
#pragma unroll 8
        for (int s = 0; s < splits; s++)
        {
            const float w = sc[g * chunk + s];
            if (w != 0.0f) acc += __ldcg(part_out + (base + s) * hd + d) * w;
        }
        out[((long)t * heads + (long)kvh * G) * hd + i] = acc;
    }
}

#define ATTN(G) \
    extern "C" __global__ void __launch_bounds__(128) attn_g##G(const float* q, const u16* kc, const u16* vc, float* po, float* pml, int* counters, \
        float* out, int heads, int kv_heads, int hd, int capacity, const int* pos, int chunk, int splits, float scale) \
    { attention<G>(q, kc, vc, po, pml, counters, out, heads, kv_heads, hd, capacity, pos, chunk, splits, scale); }
ATTN(1) ATTN(2) ATTN(3) ATTN(4) ATTN(5) ATTN(6) ATTN(7) ATTN(8) ATTN(16)
