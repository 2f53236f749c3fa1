// Flash-decoding attention over the device paged KV cache (paged_kv.cuh): every block is read in place in its
// own formats with the dequantization fused into the dot products.
// Block (split, kv head, query row) of paged_attn_gG_cC (G query heads per KV head, head dim 32·C) takes the
// split's run of the head's blocks, scores it for the G query heads of the group (each block read once per
// group), and writes the chunk's unnormalized output with its max and sum; the last block of a (row, kv head)
// to finish merges the chunks (an atomic counter it resets), so one launch does one layer's attention.
// Heads have their own lengths (eviction); query row t of `rows` sees all but the head's last rows-1-t stored
// tokens (the rows appended with it: causal for a chunk of new tokens); with batch, row t is sequence t instead and
// reads its own heads (paged_head).
// Each warp owns whole blocks; lane l owns channels [l·C, l·C + C) of every token, so its query values and its
// channels' per-channel key parameters stay in registers: quantized key blocks fold scale and min into the
// query once per block (q·k = Σ q·min + Σ (q·scale)·code), per-token value parameters are read per token.
#include "paged_lanes.cuh"

// Scores of the n visible tokens of one key block into sc[g·chunk + j0 + t].
template <int G, int C, int F>
__device__ __forceinline__ void block_scores(const u8* kb, int n, int tokens, const float (&qr)[G][C], float* sc, int chunk, int j0, int lane)
{
    constexpr int BITS = kv_bits(F);
    constexpr int HD = 32 * C;
    float qk[G][C], bias[G];
#pragma unroll
    for (int g = 0; g < G; g++)
    {
        bias[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < C; i++) qk[g][i] = qr[g][i];
    }
    if constexpr (kv_quantized(F))
    {
        // Per-channel parameters (one group per channel over the block): fold them into the query.
        const u16* scales = reinterpret_cast<const u16*>(kb + tokens * HD / 8 * BITS);
        const u16* mins = scales + HD;
#pragma unroll
        for (int i = 0; i < C; i++)
        {
            float mn, st;
            group_affine<F>(scales, mins, lane * C + i, mn, st);
#pragma unroll
            for (int g = 0; g < G; g++) { bias[g] += qr[g][i] * mn; qk[g][i] = qr[g][i] * st; }
        }
    }
#pragma unroll 4
    for (int t = 0; t < n; t++)
    {
        unsigned w[4];
        load_codes<BITS, C>(kb, (long)t * HD + lane * C, w);
        float x[C];
#pragma unroll
        for (int i = 0; i < C; i++)
        {
            const unsigned c = code_at<BITS>(w, i);
            if constexpr (kv_quantized(F)) x[i] = (float)c;
            else x[i] = float_code<F>(c);
        }
        warp_score_row<G, C>(qk, x, bias, sc, chunk, j0 + t, lane);
    }
}

// acc[g][i] += p[g][t] · v[t][lane·C + i] over the n visible tokens of one value block.
template <int G, int C, int F>
__device__ __forceinline__ void block_values(const u8* vb, int n, int tokens, int vg, const float* sc, int chunk, int j0, int lane, float (&acc)[G][C])
{
    constexpr int BITS = kv_bits(F);
    constexpr int HD = 32 * C;
    const u16* scales = reinterpret_cast<const u16*>(vb + tokens * HD / 8 * BITS);
    const int groups_per_row = HD / vg;
    const u16* mins = scales + tokens * groups_per_row;
    const int my_group = lane * C / vg;
#pragma unroll 4
    for (int t = 0; t < n; t++)
    {
        unsigned w[4];
        load_codes<BITS, C>(vb, (long)t * HD + lane * C, w);
        float x[C];
        if constexpr (kv_quantized(F))
        {
            float mn, st;
            group_affine<F>(scales, mins, t * groups_per_row + my_group, mn, st);
#pragma unroll
            for (int i = 0; i < C; i++) x[i] = mn + st * (float)code_at<BITS>(w, i);
        }
        else
        {
#pragma unroll
            for (int i = 0; i < C; i++) x[i] = float_code<F>(code_at<BITS>(w, i));
        }
        add_weighted_row<G, C>(acc, x, sc, chunk, j0 + t);
    }
}

#define KV_FORMAT_SWITCH(fmt, CALL) \
    switch (fmt) \
    { \
    case KV_F32: CALL(KV_F32); break; \
    case KV_F16: CALL(KV_F16); break; \
    case KV_BF16: CALL(KV_BF16); break; \
    case KV_FP8: CALL(KV_FP8); break; \
    case KV_INT8: CALL(KV_INT8); break; \
    case KV_INT4: CALL(KV_INT4); break; \
    case KV_INT2: CALL(KV_INT2); break; \
    case KV_TERNARY: CALL(KV_TERNARY); break; \
    default: CALL(KV_BINARY); break; \
    }


// The per-block functions of the lane-channels kernel (paged_lanes.cuh): one format switch per block, no scratch.
template <int G, int C>
struct LaneBlocks
{
    __device__ __forceinline__ float* claim(float* at, int, int) const { return at; }

    __device__ __forceinline__ void scores(uint4 d, const u8* kb, int cnt, int tokens, int, const float (&qr)[G][C], float* sc, int chunk, int j0, int lane) const
    {
#define SCORES(F) block_scores<G, C, F>(kb, cnt, tokens, qr, sc, chunk, j0, lane)
        KV_FORMAT_SWITCH(desc_kfmt(d), SCORES)
#undef SCORES
    }

    __device__ __forceinline__ void values(uint4 d, const u8* vb, int cnt, int tokens, int vg, const float* sc, int chunk, int j0, int lane, float (&acc)[G][C]) const
    {
#define VALUES(F) block_values<G, C, F>(vb, cnt, tokens, vg, sc, chunk, j0, lane, acc)
        KV_FORMAT_SWITCH(desc_vfmt(d), VALUES)
#undef VALUES
    }
};


// ---- Wide variant (paged_attn_w_gG_cC): the same attention with 16-byte loads for every format. ----
// The per-lane-channels layout above issues C·bits/8 bytes per lane per token (1 byte for INT2 at head dim 128): too
// few bytes in flight to cover memory latency. Here, for scores, each lane loads 16 bytes of one key row (E = 128/bits
// channels; L = hd/E lanes per token, 32/L tokens per warp step, several steps' loads issued before use) and reads the
// query from shared memory as [channel][head] (quantized blocks fold scale into a per-warp copy and min into a bias
// once per block; the query rows are padded by 4 floats every 8 channels so the lanes of a token, 16-byte slices apart,
// hit different shared-memory banks). For values, each lane owns CV channels (at least 4 bytes of codes) of 32·CV/hd tokens per step,
// and the token slots are summed with shuffles when the format changes or the warp ends.

// Index of (channel c, head 0) in a padded [channel][head] query copy: 4 floats of padding every 8 channels.
template <int G>
__device__ __forceinline__ int qidx(int c) { return c * G + (c >> 3) * 4; }

// Scores of the n visible tokens of one key block into sc[g·chunk + j0 + t].
template <int G, int F>
__device__ __forceinline__ void wide_scores(const u8* kb, int n, int tokens, const float* qs, float* wq, float* sc, int chunk, int j0, int lane, int hd)
{
    constexpr int BITS = kv_bits(F);
    constexpr int E0 = 128 / BITS;
    const int E = min(E0, hd);                // elements per lane: 16 bytes of codes, or a whole row
    const int L = hd / E, sub = lane % L, slot = lane / L, tps = 32 / L;
    float bias[G];
#pragma unroll
    for (int g = 0; g < G; g++) bias[g] = 0.0f;
    const float* q = qs;
    if constexpr (kv_quantized(F))
    {
        // Per-channel parameters folded once per block: wq[c][g] = q[c][g]·step_c, bias_g = Σ_c q[c][g]·min_c.
        const u16* scales = reinterpret_cast<const u16*>(kb + tokens * hd / 8 * BITS);
        const u16* mins = scales + hd;
        for (int c = lane; c < hd; c += 32)
        {
            float mn, st;
            group_affine<F>(scales, mins, c, mn, st);
#pragma unroll
            for (int g = 0; g < G; g++) { bias[g] += qs[qidx<G>(c) + g] * mn; wq[qidx<G>(c) + g] = qs[qidx<G>(c) + g] * st; }
        }
#pragma unroll
        for (int g = 0; g < G; g++) bias[g] = warp_sum(bias[g]);
        __syncwarp();
        q = wq;
    }
    const int c0 = sub * E;
    for (int t0 = 0; t0 < n; t0 += 4 * tps)
    {
        unsigned w[4][4];
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            const int t = min(t0 + u * tps + slot, n - 1); // past the end: a repeated row whose score is dropped
            if (E == E0) load_codes<BITS, E0>(kb, (long)t * hd + c0, w[u]);
            else load_codes<BITS, E0 / 2>(kb, (long)t * hd + c0, w[u]); // a 64-channel row narrower than 16 bytes
        }
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            float s[G];
#pragma unroll
            for (int g = 0; g < G; g++) s[g] = 0.0f;
#pragma unroll
            for (int e = 0; e < E0; e++)
            {
                if (e >= E) break;
                const unsigned code = code_at<BITS>(w[u], e);
                float x;
                if constexpr (kv_quantized(F)) x = (float)code;
                else x = float_code<F>(code);
                const float* qc = q + qidx<G>(c0 + e);
                if constexpr (G % 4 == 0)
                {
#pragma unroll
                    for (int g4 = 0; g4 < G; g4 += 4)
                    {
                        const float4 qq = *reinterpret_cast<const float4*>(qc + g4);
                        s[g4] += qq.x * x; s[g4 + 1] += qq.y * x; s[g4 + 2] += qq.z * x; s[g4 + 3] += qq.w * x;
                    }
                }
                else
                {
#pragma unroll
                    for (int g = 0; g < G; g++) s[g] += qc[g] * x;
                }
            }
            for (int o = L / 2; o >= 1; o >>= 1)
#pragma unroll
                for (int g = 0; g < G; g++) s[g] += __shfl_xor_sync(0xffffffffu, s[g], o);
            const int t = t0 + u * tps + slot;
            if (sub == 0 && t < n)
#pragma unroll
                for (int g = 0; g < G; g++) sc[g * chunk + j0 + t] = s[g] + bias[g];
        }
    }
    __syncwarp(); // wq is rewritten by the warp's next block
}

// Value channels per lane: at least 4 bytes of codes, at least hd/32, at most 64/G accumulators per head.
__device__ __forceinline__ constexpr int value_channels(int f, int hd, int g)
{
    // max(min(32 / bits, 16, 64 / g), hd / 32), spelled out: min/max are not constexpr in device code.
    return (32 / kv_bits(f) < (16 < 64 / g ? 16 : 64 / g) ? 32 / kv_bits(f) : (16 < 64 / g ? 16 : 64 / g)) > hd / 32
        ? (32 / kv_bits(f) < (16 < 64 / g ? 16 : 64 / g) ? 32 / kv_bits(f) : (16 < 64 / g ? 16 : 64 / g))
        : hd / 32;
}

// acc[g][i] += p[g][t] · v[t][c] over the n visible tokens of one value block; lane owns channels [sub·CV, sub·CV + CV)
// of token slot lane / (hd / CV).
template <int G, int C, int F>
__device__ __forceinline__ void wide_values(const u8* vb, int n, int tokens, int vg, const float* sc, int chunk, int j0, int lane, float (&acc)[G][16])
{
    constexpr int BITS = kv_bits(F);
    constexpr int HD = 32 * C;
    constexpr int CV = value_channels(F, HD, G);
    constexpr int LV = HD / CV, TV = 32 / LV;
    const int sub = lane % LV, slot = lane / LV, c0 = sub * CV;
    const u16* scales = reinterpret_cast<const u16*>(vb + tokens * HD / 8 * BITS);
    const int groups_per_row = HD / vg;
    const u16* mins = scales + tokens * groups_per_row;
    const int my_group = c0 / vg;
    for (int t0 = 0; t0 < n; t0 += 4 * TV)
    {
        unsigned w[4][4];
        float mn[4], st[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            const int t = min(t0 + u * TV + slot, n - 1);
            load_codes<BITS, CV>(vb, (long)t * HD + c0, w[u]);
            if constexpr (kv_quantized(F)) group_affine<F>(scales, mins, t * groups_per_row + my_group, mn[u], st[u]);
        }
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            const int t = t0 + u * TV + slot;
            if (t >= n) break;
            float x[CV];
#pragma unroll
            for (int i = 0; i < CV; i++)
            {
                if constexpr (kv_quantized(F)) x[i] = mn[u] + st[u] * (float)code_at<BITS>(w[u], i);
                else x[i] = float_code<F>(code_at<BITS>(w[u], i));
            }
#pragma unroll
            for (int g = 0; g < G; g++)
            {
                const float p = sc[g * chunk + j0 + t];
#pragma unroll
                for (int i = 0; i < CV; i++) acc[g][i] += p * x[i];
            }
        }
    }
}

// Sums a value format's accumulators over its token slots into ov and clears them.
template <int G, int C, int F>
__device__ __forceinline__ void wide_flush(float (&acc)[G][16], float* ov, int lane)
{
    constexpr int HD = 32 * C;
    constexpr int CV = value_channels(F, HD, G);
    constexpr int LV = HD / CV;
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int i = 0; i < CV; i++)
        {
            float a = acc[g][i];
#pragma unroll
            for (int o = LV; o < 32; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
            if (lane < LV) atomicAdd(&ov[g * HD + lane * CV + i], a);
            acc[g][i] = 0.0f;
        }
}

template <int G, int C>
__device__ __forceinline__ void paged_attention_wide(
    const float* __restrict__ q, const u8* __restrict__ pool, const uint4* __restrict__ desc, const int* __restrict__ head_blocks,
    const int* __restrict__ head_tokens, float* part_out, float* part_ml, int* counters, float* __restrict__ out,
    int heads, int kv_heads, int max_blocks, int tokens, int vg, int rows, int chunk_blocks, int splits, float scale, int batch)
{
    constexpr int HD = 32 * C;
    const SplitWork w = split_work(desc, head_blocks, head_tokens, heads, kv_heads, max_blocks, rows, chunk_blocks, splits, G, batch);
    const int kvh = w.kvh, t = w.t, limit = w.limit, nb = w.nb;
    const uint4* hdesc = w.hdesc;
    const long first = w.first;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int chunk = chunk_blocks * tokens;
    extern __shared__ float4 smem4[];
    constexpr int QF = G * HD + HD / 2;                // a padded [HD, G] query copy (qidx)
    float* qs = reinterpret_cast<float*>(smem4);       // pre-scaled queries
    float* wqs = qs + QF;                              // per warp: folded queries
    float* ov = wqs + 4 * QF;                          // [G, HD] value accumulators
    int* boff = reinterpret_cast<int*>(ov + G * HD);   // [chunk_blocks + 1]
    float* sc = reinterpret_cast<float*>(boff + chunk_blocks + 1); // [G, chunk]

    for (int i = threadIdx.x; i < G * HD; i += blockDim.x)
    {
        ov[i] = 0.0f;
        const int g = i / HD, c = i % HD;
        qs[qidx<G>(c) + g] = q[((long)t * heads + (long)kvh * G) * HD + i] * scale;
    }
    const int n = split_offsets(hdesc, nb, limit, boff);
    if (n == 0) empty_chunk(part_ml, first, splits, G);
    else
    {
        float* wq = wqs + warp * QF;
        for (int bi = warp; bi < nb; bi += warps)
        {
            const int j0 = boff[bi], cnt = boff[bi + 1] - j0;
            if (cnt == 0) continue;
            const uint4 d = hdesc[bi];
            const u8* kb = pool + (size_t)d.x * 16;
#define WSCORES(F) wide_scores<G, F>(kb, cnt, tokens, qs, wq, sc, chunk, j0, lane, HD)
            KV_FORMAT_SWITCH(desc_kfmt(d), WSCORES)
#undef WSCORES
        }
        __syncthreads();
        chunk_softmax(sc, chunk, n, G, part_ml, first, splits);
        __syncthreads();

        float acc[G][16];
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int i = 0; i < 16; i++) acc[g][i] = 0.0f;
        int held = -1; // the value format the accumulators belong to
        for (int bi = warp; bi < nb; bi += warps)
        {
            const int j0 = boff[bi], cnt = boff[bi + 1] - j0;
            if (cnt == 0) continue;
            const uint4 d = hdesc[bi];
            const int vf = desc_vfmt(d);
            if (vf != held && held >= 0)
            {
#define WFLUSH(F) wide_flush<G, C, F>(acc, ov, lane)
                KV_FORMAT_SWITCH(held, WFLUSH)
            }
            held = vf;
            const u8* vb = pool + (size_t)d.y * 16;
#define WVALUES(F) wide_values<G, C, F>(vb, cnt, tokens, vg, sc, chunk, j0, lane, acc)
            KV_FORMAT_SWITCH(vf, WVALUES)
#undef WVALUES
        }
        if (held >= 0) { KV_FORMAT_SWITCH(held, WFLUSH) }
#undef WFLUSH
        __syncthreads();
        store_chunk(ov, part_out, first, splits, G, HD);
    }
    merge_splits(part_out, part_ml, counters, out, sc, chunk, G, HD, heads, kv_heads, splits, t, kvh);
}

// pfa/pfn_a, pfb/pfn_b: device memory the next kernels read, asked of L2 first (prefetch_l2; 0 bytes: none).
#define PAGED_ATTN(G, C) \
    extern "C" __global__ void __launch_bounds__(128) paged_attn_g##G##_c##C(const float* q, const u8* pool, const uint4* desc, \
        const int* head_blocks, const int* head_tokens, float* po, float* pml, int* counters, float* out, int heads, int kv_heads, \
        int max_blocks, int tokens, int vg, int rows, int chunk_blocks, int splits, float scale, int batch, const void* pfa, long pfn_a, \
        const void* pfb, long pfn_b) \
    { \
        prefetch_l2(pfa, pfn_a, pfb, pfn_b); \
        paged_attention_lanes<G, C>(q, pool, desc, head_blocks, head_tokens, po, pml, counters, out, heads, kv_heads, max_blocks, tokens, vg, rows, \
            chunk_blocks, splits, scale, batch, LaneBlocks<G, C>{}); \
    }
PAGED_ATTN(1, 2) PAGED_ATTN(2, 2) PAGED_ATTN(3, 2) PAGED_ATTN(4, 2) PAGED_ATTN(8, 2)
PAGED_ATTN(1, 4) PAGED_ATTN(2, 4) PAGED_ATTN(3, 4) PAGED_ATTN(4, 4) PAGED_ATTN(8, 4)

#define PAGED_ATTN_WIDE(G, C) \
    extern "C" __global__ void __launch_bounds__(128) paged_attn_w_g##G##_c##C(const float* q, const u8* pool, const uint4* desc, \
        const int* head_blocks, const int* head_tokens, float* po, float* pml, int* counters, float* out, int heads, int kv_heads, \
        int max_blocks, int tokens, int vg, int rows, int chunk_blocks, int splits, float scale, int batch, const void* pfa, long pfn_a, \
        const void* pfb, long pfn_b) \
    { \
        prefetch_l2(pfa, pfn_a, pfb, pfn_b); \
        paged_attention_wide<G, C>(q, pool, desc, head_blocks, head_tokens, po, pml, counters, out, heads, kv_heads, max_blocks, tokens, vg, rows, \
            chunk_blocks, splits, scale, batch); \
    }
PAGED_ATTN_WIDE(1, 2) PAGED_ATTN_WIDE(2, 2) PAGED_ATTN_WIDE(3, 2) PAGED_ATTN_WIDE(4, 2) PAGED_ATTN_WIDE(8, 2)
PAGED_ATTN_WIDE(1, 4) PAGED_ATTN_WIDE(2, 4) PAGED_ATTN_WIDE(3, 4) PAGED_ATTN_WIDE(4, 4) PAGED_ATTN_WIDE(8, 4)
