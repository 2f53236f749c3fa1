// The lane-channels paged attention, shared by paged_attention.cu (blocks of the paged_kv.cuh formats) and
// paged_attention_vidkv.cu (VidKV blocks among them): block (split, kv head, query row) of 4 warps takes the split's run
// of the head's blocks (split_work), each warp owning whole blocks, lane l owning channels [l·C, l·C + C) of every token.
// The kernel is templated on its per-block functions, a Blocks type with
//   float* claim(float* at, int warp, int tokens)   takes its shared scratch from `at` (after the value accumulators),
//                                                    returns the first float past it (the same layout the host sized);
//   void scores(d, kb, cnt, tokens, vg, qr, sc, chunk, j0, lane)   scores of the cnt visible tokens of the key block
//                                                    of descriptor d at kb into sc[g·chunk + j0 + t];
//   void values(d, vb, cnt, tokens, vg, sc, chunk, j0, lane, acc)  acc[g][i] += p[g][t]·v[t][lane·C + i] over them.
#pragma once
#include "paged_kv.cuh"

// sc[g·chunk + j] = base[g] + the warp's Σ_i q[g][i]·x[i]: one token's score under each of the G heads (lane g writes head g's).
template <int G, int C>
__device__ __forceinline__ void warp_score_row(const float (&q)[G][C], const float (&x)[C], const float (&base)[G], float* sc, int chunk, int j, int lane)
{
    float part[G];
#pragma unroll
    for (int g = 0; g < G; g++)
    {
        float s = base[g];
#pragma unroll
        for (int i = 0; i < C; i++) s += q[g][i] * x[i];
        part[g] = warp_sum(s);
    }
#pragma unroll
    for (int g = 0; g < G; g++)
        if (lane == g) sc[g * chunk + j] = part[g];
}

// acc[g][i] += p_g·x[i], p_g = sc[g·chunk + j]: one token's value row weighted by its probability under each of the G heads.
template <int G, int C>
__device__ __forceinline__ void add_weighted_row(float (&acc)[G][C], const float (&x)[C], const float* sc, int chunk, int j)
{
#pragma unroll
    for (int g = 0; g < G; g++)
    {
        const float p = sc[g * chunk + j];
#pragma unroll
        for (int i = 0; i < C; i++) acc[g][i] += p * x[i];
    }
}

template <int G, int C, class Blocks>
__device__ __forceinline__ void paged_attention_lanes(
    const float* __restrict__ q, const u8* __restrict__ pool, const uint4* __restrict__ desc, const int* __restrict__ head_blocks,
    const int* __restrict__ head_tokens, float* part_out, float* part_ml, int* counters, float* __restrict__ out,
    int heads, int kv_heads, int max_blocks, int tokens, int vg, int rows, int chunk_blocks, int splits, float scale, int batch, Blocks blocks)
{
    constexpr int HD = 32 * C;
    pdl_wait();
    const SplitWork w = split_work(desc, head_blocks, head_tokens, heads, kv_heads, max_blocks, rows, chunk_blocks, splits, G, batch);
    const int kvh = w.kvh, t = w.t, nb = w.nb;
    const uint4* hdesc = w.hdesc;
    const long first = w.first;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int chunk = chunk_blocks * tokens;
    extern __shared__ float4 smem4[];
    float* ov = reinterpret_cast<float*>(smem4);                                  // [G, HD] value accumulators
    int* boff = reinterpret_cast<int*>(blocks.claim(ov + G * HD, warp, tokens));  // [chunk_blocks + 1] first score slot of each block
    float* sc = reinterpret_cast<float*>(boff + chunk_blocks + 1);               // [G, chunk] scores, then probabilities

    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) ov[i] = 0.0f;
    const int n = split_offsets(hdesc, nb, w.limit, boff);
    if (n == 0) empty_chunk(part_ml, first, splits, G);
    else
    {
        float qr[G][C];
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int i = 0; i < C; i++) qr[g][i] = q[((long)t * heads + (long)kvh * G + g) * HD + lane * C + i] * scale;

        for (int bi = warp; bi < nb; bi += warps)
        {
            const int j0 = boff[bi], cnt = boff[bi + 1] - j0;
            if (cnt == 0) continue;
            const uint4 d = hdesc[bi];
            blocks.scores(d, pool + (size_t)d.x * 16, cnt, tokens, vg, qr, sc, chunk, j0, lane);
        }
        __syncthreads();
        chunk_softmax(sc, chunk, n, G, part_ml, first, splits);
        __syncthreads();

        float acc[G][C];
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int i = 0; i < C; i++) acc[g][i] = 0.0f;
        for (int bi = warp; bi < nb; bi += warps)
        {
            const int j0 = boff[bi], cnt = boff[bi + 1] - j0;
            if (cnt == 0) continue;
            const uint4 d = hdesc[bi];
            blocks.values(d, pool + (size_t)d.y * 16, cnt, tokens, vg, sc, chunk, j0, lane, acc);
        }
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int i = 0; i < C; i++) atomicAdd(&ov[g * HD + lane * C + i], acc[g][i]);
        __syncthreads();
        store_chunk(ov, part_out, first, splits, G, HD);
    }
    // Chunk weights go to the score area (the planner keeps splits <= chunk).
    merge_splits(part_out, part_ml, counters, out, sc, chunk, G, HD, heads, kv_heads, splits, t, kvh);
}
