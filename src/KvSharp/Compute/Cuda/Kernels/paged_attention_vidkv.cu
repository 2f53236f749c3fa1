// Flash-decoding attention over a device paged KV cache that holds VidKV blocks (paged_vidkv.cuh) among blocks of any
// other format: paged_attn_vid_gG_cC, dispatched by CudaPagedKvCache when it holds VidKV blocks (the other kernels read
// only the formats of paged_kv.cuh). The lane-channels kernel of paged_lanes.cuh (as paged_attention.cu's
// paged_attn_gG_cC) with VidKvBlocks as its per-block functions: block (split, kv head, query row) of 4 warps, each warp
// owning whole blocks, lane l owning channels [l·C, l·C + C) of every token; with batch, row t is sequence t (paged_head).
//
// VidKV keys are never inverse-transformed (VidKvAttention on the CPU does the same): with outlier channels o and normal
// channels c, q·k̂_t = [Σ_o q_o·min_o + Σ_c q_c·mean_c] + Σ_o (q_o·step_o)·code_to + Σ_{j≥1} φ_j(t)·u_j, where
// u_j = Σ_c (q_c·scale_c)·s_jc, so a block costs its n·hd codes once per query head plus an (n-1)·n transform of u,
// instead of n²·(hd - m) to rebuild the keys. The basis is the block's own length n (a partial block has its own).
// Keys are scored one lane per token (and per coefficient for u) from a folded query in shared memory; a first version
// with lane-owned channels needed a warp reduction per token and coefficient and ran at 80 GB/s (docs/cuda.md).
// VidKV values are widened per token (trit·scale_c, or a salient token's Int4 row). Blocks of the other formats are read
// element by element through decode_element (BlockCodec.Decode's arithmetic): correct for every format, not tuned (in a
// VidKV cache they are the F32 residual and the press's uncompressed recent tokens).
#include "paged_vidkv.cuh"
#include "paged_lanes.cuh"

constexpr int VID_WARPS = 4;

// Scores of the cnt visible tokens of a VidKV key block of n stored tokens into sc[g·chunk + j0 + t]. qs: the warp's
// [G, HD] scratch for the scaled query in the parameters' order (outlier ranks 0..m-1, then normal ranks); u: its
// [G, tokens] scratch for the transformed query. Lane l first folds the parameters of its channels into qs (and the
// constant into a bias, summed over the warp), then one lane per coefficient j computes u_j from that coefficient's sign
// row, then one lane per token t adds its outlier codes and Σ_j φ_j(t)·u_j: no shuffle per token, every code read once.
template <int G, int C>
__device__ __forceinline__ void vid_key_scores(const u8* kb, int n, int cnt, int tokens, int m, const float (&qr)[G][C],
    const float* __restrict__ basis, float* qs, float* u, float* sc, int chunk, int j0, int lane)
{
    constexpr int HD = 32 * C;
    const int normal = HD - m;
    const u8* oc = kb + HD / 8;
    const u8* nc = kb + vid_key_signs_at(tokens, HD, m);
    const u8* p = kb + vid_key_params_at(tokens, HD, m);
    unsigned mask[C]; // the channel mask, HD bits at the block's (16-byte aligned) start
#pragma unroll
    for (int w = 0; w < C; w++) mask[w] = __ldg(reinterpret_cast<const unsigned*>(kb) + w);
    float bias[G];
#pragma unroll
    for (int g = 0; g < G; g++) bias[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < C; i++)
    {
        const int c = lane * C + i, word = c >> 5;
        int ro = __popc(mask[word] & ((1u << (c & 31)) - 1u)); // outlier channels below c
#pragma unroll
        for (int w = 0; w < C; w++) if (w < word) ro += __popc(mask[w]);
        const bool outlier = ((mask[word] >> (c & 31)) & 1u) != 0;
        const int rn = c - ro; // normal channels below c
        const float step = outlier ? vid_param(p, ro) : vid_param(p, 2 * m + rn);
        const float base = outlier ? vid_param(p, m + ro) : vid_param(p, 2 * m + normal + rn);
        const int slot = outlier ? ro : m + rn;
#pragma unroll
        for (int g = 0; g < G; g++) { qs[g * HD + slot] = qr[g][i] * step; bias[g] += qr[g][i] * base; }
    }
#pragma unroll
    for (int g = 0; g < G; g++) bias[g] = warp_sum(bias[g]);
    __syncwarp();
    // u_j = Σ_k (q·scale)_k · s_jk over the normal channels, one lane per coefficient j = 1 .. n-1 (the mean has no signs).
    for (int j = 1 + lane; j < n; j += 32)
    {
        float acc[G];
#pragma unroll
        for (int g = 0; g < G; g++) acc[g] = 0.0f;
        for (int k0 = 0; k0 < normal; k0 += 32)
        {
            const unsigned bits = vid_bits32(nc, j * normal + k0);
            const int kn = min(32, normal - k0);
#pragma unroll 8
            for (int k = 0; k < kn; k++)
            {
                const float sign = ((bits >> k) & 1u) != 0 ? 1.0f : -1.0f;
#pragma unroll
                for (int g = 0; g < G; g++) acc[g] += sign * qs[g * HD + m + k0 + k];
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) u[g * tokens + j] = acc[g];
    }
    __syncwarp();
    // One lane per token: the constant, the outlier codes, the inverse transform of u.
    const float* bn = basis + vid_basis_at(n);
    for (int t = lane; t < cnt; t += 32)
    {
        float s[G];
#pragma unroll
        for (int g = 0; g < G; g++) s[g] = bias[g];
        for (int k0 = 0; k0 < m; k0 += 16)
        {
            const unsigned bits = vid_bits32(oc, 2 * (t * m + k0));
            const int kn = min(16, m - k0);
#pragma unroll 8
            for (int k = 0; k < kn; k++)
            {
                const float code = (float)((bits >> (2 * k)) & 3u);
#pragma unroll
                for (int g = 0; g < G; g++) s[g] += code * qs[g * HD + k0 + k];
            }
        }
        for (int j = 1; j < n; j++)
        {
            const float phi = __ldg(bn + j * n + t);
#pragma unroll
            for (int g = 0; g < G; g++) s[g] += phi * u[g * tokens + j];
        }
#pragma unroll
        for (int g = 0; g < G; g++) sc[g * chunk + j0 + t] = s[g];
    }
    __syncwarp(); // qs and u are rewritten by the warp's next block
}

// acc[g][i] += p[g][t] · v[t][lane·C + i] over the cnt visible tokens of a VidKV value block with s salient slots.
template <int G, int C>
__device__ __forceinline__ void vid_values(const u8* vb, int cnt, int tokens, int salient, const float* sc, int chunk, int j0, int lane, float (&acc)[G][C])
{
    constexpr int HD = 32 * C;
    const u8* trits = vb + vid_value_trits_at(tokens);
    const u8* rows = vb + vid_value_rows_at(tokens, HD);
    const u8* p = vb + vid_value_params_at(tokens, HD, salient);
    float scale[C];
#pragma unroll
    for (int i = 0; i < C; i++) scale[i] = vid_param(p, lane * C + i);
    int slot = 0;
    for (int t = 0; t < cnt; t++)
    {
        float x[C];
        if (vid_mask_bit(vb, t))
        {
            const float step = vid_param(p, HD + slot), mn = vid_param(p, HD + salient + slot);
            const u8* row = rows + slot * (HD / 2);
#pragma unroll
            for (int i = 0; i < C; i++)
            {
                const int c = lane * C + i;
                x[i] = __fadd_rn(mn, __fmul_rn((float)((row[c >> 1] >> (4 * (c & 1))) & 15), step));
            }
            slot++;
        }
        else
        {
#pragma unroll
            for (int i = 0; i < C; i++) x[i] = (float)vid_trit(trits, t * HD + lane * C + i) * scale[i];
        }
        add_weighted_row<G, C>(acc, x, sc, chunk, j0 + t);
    }
}

// Scores of a block of any other format, element by element.
template <int G, int C>
__device__ __forceinline__ void element_scores(const u8* kb, int kf, int cnt, int tokens, int vg, const float (&qr)[G][C], float* sc, int chunk, int j0, int lane)
{
    constexpr int HD = 32 * C;
    float zero[G];
#pragma unroll
    for (int g = 0; g < G; g++) zero[g] = 0.0f;
    for (int t = 0; t < cnt; t++)
    {
        float x[C];
#pragma unroll
        for (int i = 0; i < C; i++) x[i] = decode_element(kb, kf, true, t, lane * C + i, tokens, HD, vg);
        warp_score_row<G, C>(qr, x, zero, sc, chunk, j0 + t, lane);
    }
}

// Values of a block of any other format, element by element.
template <int G, int C>
__device__ __forceinline__ void element_values(const u8* vb, int vf, int cnt, int tokens, int vg, const float* sc, int chunk, int j0, int lane, float (&acc)[G][C])
{
    constexpr int HD = 32 * C;
    for (int t = 0; t < cnt; t++)
    {
        float x[C];
#pragma unroll
        for (int i = 0; i < C; i++) x[i] = decode_element(vb, vf, false, t, lane * C + i, tokens, HD, vg);
        add_weighted_row<G, C>(acc, x, sc, chunk, j0 + t);
    }
}

// The per-block functions of the VidKV kernel (paged_lanes.cuh): VidKV blocks by their own readers, the rest element by
// element. basis: the float32 real-DFT tables of every length up to `tokens` (vid_basis_at); m: outlier channels of the
// cache's VidKV key blocks; s: salient tokens of its VidKV value blocks; qs, u: this warp's scratch for vid_key_scores.
template <int G, int C>
struct VidKvBlocks
{
    const float* basis;
    int m, s;
    float* qs;
    float* u;

    // [VID_WARPS, G, HD] folded queries, then [VID_WARPS, G, tokens] transformed queries.
    __device__ __forceinline__ float* claim(float* at, int warp, int tokens)
    {
        constexpr int HD = 32 * C;
        qs = at + warp * G * HD;
        u = at + VID_WARPS * G * HD + warp * G * tokens;
        return at + VID_WARPS * G * HD + VID_WARPS * G * tokens;
    }

    __device__ __forceinline__ void scores(uint4 d, const u8* kb, int cnt, int tokens, int vg, const float (&qr)[G][C], float* sc, int chunk, int j0, int lane) const
    {
        const int kf = desc_kfmt(d);
        if (kf == KV_VIDKV_KEY) vid_key_scores<G, C>(kb, desc_count(d), cnt, tokens, m, qr, basis, qs, u, sc, chunk, j0, lane);
        else element_scores<G, C>(kb, kf, cnt, tokens, vg, qr, sc, chunk, j0, lane);
    }

    __device__ __forceinline__ void values(uint4 d, const u8* vb, int cnt, int tokens, int vg, const float* sc, int chunk, int j0, int lane, float (&acc)[G][C]) const
    {
        const int vf = desc_vfmt(d);
        if (vf == KV_VIDKV_VALUE) vid_values<G, C>(vb, cnt, tokens, s, sc, chunk, j0, lane, acc);
        else element_values<G, C>(vb, vf, cnt, tokens, vg, sc, chunk, j0, lane, acc);
    }
};

#define PAGED_ATTN_VID(G, C) \
    extern "C" __global__ void __launch_bounds__(128) paged_attn_vid_g##G##_c##C(const float* q, const u8* pool, const uint4* desc, \
        const int* head_blocks, const int* head_tokens, float* po, float* pml, int* counters, float* out, int heads, int kv_heads, \
        int max_blocks, int tokens, int vg, int rows, int chunk_blocks, int splits, float scale, int batch, const float* basis, int vid_m, \
        int vid_s) \
    { paged_attention_lanes<G, C>(q, pool, desc, head_blocks, head_tokens, po, pml, counters, out, heads, kv_heads, max_blocks, tokens, vg, rows, \
        chunk_blocks, splits, scale, batch, VidKvBlocks<G, C>{basis, vid_m, vid_s, nullptr, nullptr}); }
PAGED_ATTN_VID(1, 2) PAGED_ATTN_VID(2, 2) PAGED_ATTN_VID(4, 2) PAGED_ATTN_VID(8, 2)
PAGED_ATTN_VID(1, 4) PAGED_ATTN_VID(2, 4) PAGED_ATTN_VID(4, 4) PAGED_ATTN_VID(8, 4)
