// The device paged KV cache's block formats and tables, shared by paged_attention.cu and paged_cache.cu.
//
// Blocks hold the same bytes as KvSharp.Cache.Blocks (BlockLayout): codes [tokens, hd] row-major, bit-packed
// LSB first, then f16 scales, then f16 mins/means (none for ternary). Keys are per channel with one group per
// block (KIVI), values per token in groups of vg channels; float formats have no parameters.
// A head's table is an array of block descriptors (uint4):
//   x = key block offset in the pool (16-byte units), y = value block offset,
//   z = token count (bits 0..15) | key format (16..19) | value format (20..23),
//   w = index of the block's first token among the head's stored tokens.
// The last descriptor of every head is its residual: an F32 block in a slot reserved for the head, where
// appends land until it is full and is encoded in the cache's formats.
#pragma once
#include "common.cuh"

typedef unsigned char u8;

// KvSharp.Cache.Blocks.KvFormat values.
#define KV_F32 0
#define KV_F16 1
#define KV_BF16 2
#define KV_FP8 3
#define KV_INT8 4
#define KV_INT4 5
#define KV_INT2 6
#define KV_TERNARY 7
#define KV_BINARY 8
#define KV_VIDKV_KEY 9   // VidKV blocks: paged_vidkv.cuh
#define KV_VIDKV_VALUE 10

__device__ __forceinline__ constexpr int kv_bits(int f)
{
    return f == KV_F32 ? 32 : f <= KV_BF16 ? 16 : f <= KV_INT8 ? 8 : f == KV_INT4 ? 4 : f <= KV_TERNARY ? 2 : 1;
}
__device__ __forceinline__ constexpr bool kv_quantized(int f) { return f >= KV_INT8; }
__device__ __forceinline__ constexpr int kv_params(int f) { return f == KV_TERNARY ? 1 : f >= KV_INT8 ? 2 : 0; }

__device__ __forceinline__ int desc_count(uint4 d) { return (int)(d.z & 0xffffu); }
__device__ __forceinline__ int desc_kfmt(uint4 d) { return (int)((d.z >> 16) & 0xfu); }
__device__ __forceinline__ int desc_vfmt(uint4 d) { return (int)((d.z >> 20) & 0xfu); }
__device__ __forceinline__ unsigned desc_meta(int count, int kf, int vf) { return (unsigned)count | ((unsigned)kf << 16) | ((unsigned)vf << 20); }
// Tokens of a block that a query row seeing the head's first `limit` stored tokens reads.
__device__ __forceinline__ int desc_visible(uint4 d, int limit) { return max(0, min(desc_count(d), limit - (int)d.w)); }

// Bytes of one block's codes and of its parameters.
__device__ __forceinline__ int code_bytes(int f, int tokens, int hd) { return tokens * hd / 8 * kv_bits(f); }
__device__ __forceinline__ int group_count(int f, bool keys, int tokens, int hd, int vg)
{
    return !kv_quantized(f) ? 0 : keys ? hd : tokens * (hd / vg);
}
__device__ __forceinline__ int block_bytes(int f, bool keys, int tokens, int hd, int vg)
{
    return code_bytes(f, tokens, hd) + group_count(f, keys, tokens, hd, vg) * kv_params(f) * 2;
}

// FP8 E4M3 code -> float: the 7 magnitude bits placed under f16's exponent/mantissa fields give the value
// times 2^-8 (normal and subnormal alike; exact), so one f16 conversion and a power-of-two scale.
// 0x7F/0xFF (NaN, which the encoder only produces from NaN input) read as ±480.
__device__ __forceinline__ float fp8_to_f32(unsigned code)
{
    const u16 h = (u16)(((code & 0x80u) << 8) | ((code & 0x7fu) << 7));
    return f16_to_f32(h) * 256.0f;
}

// The C·BITS code bits of C consecutive elements starting at element e (e·BITS is a multiple of C·BITS).
// Returned as up to 4 words; element i sits at bit i·BITS of the concatenation.
template <int BITS, int C>
__device__ __forceinline__ void load_codes(const u8* codes, long e, unsigned (&w)[4])
{
    constexpr int NBITS = BITS * C;
    const long bit = e * BITS;
    if constexpr (NBITS >= 128)
    {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(codes + bit / 8));
        w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
    }
    else if constexpr (NBITS == 64)
    {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(codes + bit / 8));
        w[0] = v.x; w[1] = v.y;
    }
    else if constexpr (NBITS == 32)
    {
        w[0] = __ldg(reinterpret_cast<const unsigned*>(codes + bit / 8));
    }
    else
    {
        w[0] = __ldg(reinterpret_cast<const unsigned*>(codes) + (bit >> 5)) >> (bit & 31);
    }
}

// Code of element i of a load_codes result.
template <int BITS>
__device__ __forceinline__ unsigned code_at(const unsigned (&w)[4], int i)
{
    if constexpr (BITS == 32) return w[i];
    else return (w[(i * BITS) >> 5] >> ((i * BITS) & 31)) & ((1u << BITS) - 1u);
}

// Float value of a code of a float format.
template <int F>
__device__ __forceinline__ float float_code(unsigned c)
{
    if constexpr (F == KV_F32) return __uint_as_float(c);
    else if constexpr (F == KV_F16) return f16_to_f32((u16)c);
    else if constexpr (F == KV_BF16) return __uint_as_float(c << 16);
    else return fp8_to_f32(c);
}

// A group's parameters as x = min + step·code: INT (scale, min), ternary (code t+1: min = -scale, step = scale),
// binary (bit 1 = mean + scale: min = mean - scale, step = 2·scale).
template <int F>
__device__ __forceinline__ void group_affine(const u16* scales, const u16* mins, int g, float& min, float& step)
{
    const float s = f16_to_f32(scales[g]);
    if constexpr (F == KV_TERNARY) { min = -s; step = s; }
    else if constexpr (F == KV_BINARY) { const float m = f16_to_f32(mins[g]); min = m - s; step = 2.0f * s; }
    else { min = f16_to_f32(mins[g]); step = s; }
}

// Element (t, c) of a block as BlockCodec.Decode computes it (float32 operations, no contraction).
__device__ __forceinline__ float decode_element(const u8* b, int f, bool keys, int t, int c, int tokens, int hd, int vg)
{
    const int e = t * hd + c;
    switch (f)
    {
    case KV_F32: return reinterpret_cast<const float*>(b)[e];
    case KV_F16: return f16_to_f32(reinterpret_cast<const u16*>(b)[e]);
    case KV_BF16: return bf16_to_f32(reinterpret_cast<const u16*>(b)[e]);
    case KV_FP8: return fp8_to_f32(b[e]);
    default: break;
    }
    const int bits = kv_bits(f), groups = group_count(f, keys, tokens, hd, vg);
    const int bit = e * bits;
    const int q = (b[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
    const int g = keys ? c : t * (hd / vg) + c / vg;
    const u16* scales = reinterpret_cast<const u16*>(b + code_bytes(f, tokens, hd));
    const float scale = f16_to_f32(scales[g]);
    if (f == KV_TERNARY) return __fmul_rn((float)(q - 1), scale);
    const float m = f16_to_f32(scales[groups + g]);
    if (f == KV_BINARY) return q == 1 ? __fadd_rn(m, scale) : __fsub_rn(m, scale);
    return __fadd_rn(m, __fmul_rn((float)q, scale));
}

// ---- What the kernels share: the grid block's split, the split's block offsets, the chunk softmax, an empty chunk. ----

// The stored tokens query row t sees of a head of `tokens`. Without batch the rows are consecutive tokens of one sequence
// (row t sees all but the head's last rows-1-t stored tokens: the rows appended with it); with batch row t is sequence t,
// and it sees all of its head's tokens.
__device__ __forceinline__ int row_visible(int tokens, int rows, int t, int batch) { return tokens - (batch ? 0 : rows - 1 - t); }

// The table head that query row t reads for KV head kvh, and in limit the stored tokens the row sees (row_visible). With
// batch, sequence t's heads follow sequence t-1's in the layer's tables ([layer, sequence, kv head]).
__device__ __forceinline__ int paged_head(int t, int kvh, int kv_heads, int rows, int batch, const int* head_tokens, int& limit)
{
    const int head = batch ? t * kv_heads + kvh : kvh;
    limit = row_visible(head_tokens[head], rows, t, batch);
    return head;
}

// The work of grid block (split, kv head, query row t) of a launch over one layer's heads: blocks [split·chunk_blocks,
// + nb) of the row's table head (descriptors at hdesc, see paged_head), of which the row sees the first `limit` stored
// tokens; `first` indexes its partial results (row t, head kvh·G, split) in part_out / part_ml.
struct SplitWork
{
    int kvh, t, limit, nb;
    const uint4* hdesc;
    long first;
};

__device__ __forceinline__ SplitWork split_work(const uint4* desc, const int* head_blocks, const int* head_tokens, int heads, int kv_heads,
    int max_blocks, int rows, int chunk_blocks, int splits, int G, int batch)
{
    SplitWork w;
    const int split = blockIdx.x, b0 = split * chunk_blocks;
    w.kvh = blockIdx.y;
    w.t = blockIdx.z;
    const int head = paged_head(w.t, w.kvh, kv_heads, rows, batch, head_tokens, w.limit);
    w.nb = min(chunk_blocks, head_blocks[head] - b0);
    w.hdesc = desc + (long)head * max_blocks + b0;
    w.first = ((long)w.t * heads + (long)w.kvh * G) * splits + split;
    return w;
}

// Visible tokens of each of the split's nb blocks as offsets boff[0..nb] (a prefix sum by warp 0); returns the total.
// Ends with a barrier.
__device__ __forceinline__ int split_offsets(const uint4* hdesc, int nb, int limit, int* boff)
{
    __shared__ int total;
    const int lane = threadIdx.x & 31;
    if (threadIdx.x < 32)
    {
        int carry = 0;
        for (int base = 0; base < max(nb, 0); base += 32)
        {
            int cnt = 0;
            if (base + lane < nb)
            {
                cnt = desc_visible(hdesc[base + lane], limit);
            }
            int incl = cnt;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1)
            {
                const int y = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += y;
            }
            if (base + lane < nb) boff[base + lane + 1] = carry + incl;
            carry += __shfl_sync(0xffffffffu, incl, 31);
        }
        if (lane == 0) { boff[0] = 0; total = carry; }
    }
    __syncthreads();
    return total;
}

// Scores sc[g·chunk + j] (j < n) to e^(s - m) per head, (m, Σ) to part_ml; one warp per head.
__device__ __forceinline__ void chunk_softmax(float* sc, int chunk, int n, int G, float* part_ml, long first, int splits)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
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
}

// Nothing visible in this split (past the head's length): an empty chunk the merge skips.
__device__ __forceinline__ void empty_chunk(float* part_ml, long first, int splits, int G)
{
    for (int i = threadIdx.x; i < G; i += blockDim.x) { part_ml[(first + (long)i * splits) * 2] = neg_inf(); part_ml[(first + (long)i * splits) * 2 + 1] = 0.0f; }
}

// The chunk's summed value accumulators ov [G, HD] to part_out.
__device__ __forceinline__ void store_chunk(const float* ov, float* part_out, long first, int splits, int G, int hd)
{
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x) part_out[(first + (long)(i / hd) * splits) * hd + i % hd] = ov[i];
}
