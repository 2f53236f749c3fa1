// Compression on the device for the paged KV cache (paged_kv.cuh): appending tokens (RoPE, the F32 residual
// block, encoding a full residual in the cache's formats) and eviction (per-head drop flags, runs of affected
// blocks decoded and re-encoded, the result compacted into a fresh pool).
// Encoding follows KvSharp.Cache.Blocks.BlockCodec exactly (float64 group statistics summed in element order,
// f16-rounded stored parameters, round-half-even codes) and decoding follows BlockCodec.Decode (float32, no
// fused multiply-add), so the bytes equal the CPU codec's.
#include "paged_kv.cuh"

// double -> f16 bits, round to nearest even, NaN -> 0, saturated to ±65504 (ScalarFormats.ToF16Saturated).
__device__ __forceinline__ u16 f16_saturated(double x)
{
    if (x != x) x = 0.0;
    x = fmin(fmax(x, -65504.0), 65504.0);
    u16 h;
    asm("cvt.rn.f16.f64 %0, %1;" : "=h"(h) : "d"(x));
    return h;
}

// float -> FP8 E4M3 (ScalarFormats.ToFp8E4M3): round to nearest even, saturating at 448, NaN -> 0x7F.
__device__ __forceinline__ unsigned f32_to_fp8(float x)
{
    const unsigned bits = __float_as_uint(x);
    const unsigned sign = (bits >> 24) & 0x80u;
    const unsigned mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u) return 0x7fu;
    const float a = __uint_as_float(mag);
    unsigned code;
    if (a < 0.015625f) code = (unsigned)rintf(__fmul_rn(a, 512.0f));
    else code = ((mag + 0x7ffffu + ((mag >> 20) & 1u)) >> 20) - ((127u - 7u) << 3);
    if (code > 0x7eu) code = 0x7eu;
    return sign | code;
}

// float -> bfloat16 bits (ScalarFormats.ToBf16).
__device__ __forceinline__ unsigned f32_to_bf16_exact(float x)
{
    const unsigned bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return ((bits >> 16) | 0x40u) & 0xffffu;
    return ((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16) & 0xffffu;
}

// Element index of member k of quantization group g, or -1 past the n present tokens.
__device__ __forceinline__ int group_member(bool keys, int g, int k, int n, int hd, int vg)
{
    if (keys) return k < n ? k * hd + g : -1; // per channel: channel g, token k
    const int per_row = hd / vg, t = g / per_row;
    return t < n ? t * hd + (g % per_row) * vg + k : -1;
}

// Encodes rows [n, hd] (float32, n <= tokens) into one block of format f at dst (block_bytes bytes, all
// written; absent rows and groups are zero bytes). Called by every thread of the block.
__device__ void encode_block(const float* rows, int n, int f, bool keys, int tokens, int hd, int vg, u8* dst)
{
    const int bits = kv_bits(f), cbytes = code_bytes(f, tokens, hd), total = tokens * hd;
    if (!kv_quantized(f))
    {
        for (int e = threadIdx.x; e < total; e += blockDim.x)
        {
            const float x = e < n * hd ? rows[e] : 0.0f;
            if (f == KV_F32) reinterpret_cast<unsigned*>(dst)[e] = e < n * hd ? __float_as_uint(x) : 0u;
            else if (f == KV_F16) reinterpret_cast<u16*>(dst)[e] = e < n * hd ? f32_to_f16(x) : (u16)0;
            else if (f == KV_BF16) reinterpret_cast<u16*>(dst)[e] = e < n * hd ? (u16)f32_to_bf16_exact(x) : (u16)0;
            else dst[e] = e < n * hd ? (u8)f32_to_fp8(x) : (u8)0;
        }
        __syncthreads();
        return;
    }
    const int groups = group_count(f, keys, tokens, hd, vg);
    const int members = keys ? tokens : vg;
    u16* scales = reinterpret_cast<u16*>(dst + cbytes);
    u16* mins = scales + groups;
    const int qmax = (1 << bits) - 1;
    // Pass 1: each group's parameters, one thread per group, float64 sums in element order.
    for (int g = threadIdx.x; g < groups; g += blockDim.x)
    {
        int count = 0;
        double lo = 1e300, hi = -1e300, sum = 0.0;
        for (int k = 0; k < members; k++)
        {
            const int e = group_member(keys, g, k, n, hd, vg);
            if (e < 0) break;
            const double x = rows[e];
            count++;
            lo = fmin(lo, x); hi = fmax(hi, x);
            sum = __dadd_rn(sum, f == KV_TERNARY ? fabs(x) : x);
        }
        u16 sb = 0, mb = 0;
        if (count > 0)
        {
            if (f == KV_TERNARY) sb = f16_saturated(__ddiv_rn(sum, (double)count));
            else if (f == KV_BINARY)
            {
                mb = f16_saturated(__ddiv_rn(sum, (double)count));
                const double mean16 = f16_to_f32(mb);
                double dev = 0.0;
                for (int k = 0; k < count; k++) dev = __dadd_rn(dev, fabs(__dsub_rn((double)rows[group_member(keys, g, k, n, hd, vg)], mean16)));
                sb = f16_saturated(__ddiv_rn(dev, (double)count));
            }
            else
            {
                sb = f16_saturated(__ddiv_rn(__dsub_rn(hi, lo), (double)qmax));
                mb = f16_saturated(lo);
            }
        }
        scales[g] = sb;
        if (kv_params(f) == 2) mins[g] = mb;
    }
    __syncthreads();
    // Pass 2: codes, one thread per 32-bit word of codes.
    const int per_word = 32 / bits, words = cbytes / 4, per_row = hd / vg;
    for (int wi = threadIdx.x; wi < words; wi += blockDim.x)
    {
        unsigned word = 0;
        for (int i = 0; i < per_word; i++)
        {
            const int e = wi * per_word + i, t = e / hd, c = e % hd;
            if (t >= n) break;
            const int g = keys ? c : t * per_row + c / vg;
            const double x = rows[e];
            const double scale16 = f16_to_f32(scales[g]);
            int q;
            if (f == KV_TERNARY) q = (scale16 > 0.0 ? (int)fmin(fmax(rint(__ddiv_rn(x, scale16)), -1.0), 1.0) : 0) + 1;
            else if (f == KV_BINARY) q = x >= (double)f16_to_f32(mins[g]) ? 1 : 0;
            else q = scale16 > 0.0 ? (int)fmin(fmax(rint(__ddiv_rn(__dsub_rn(x, (double)f16_to_f32(mins[g])), scale16)), 0.0), (double)qmax) : 0;
            word |= (unsigned)q << (i * bits);
        }
        reinterpret_cast<unsigned*>(dst)[wi] = word;
    }
    __syncthreads();
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

// Pool slots of 16 bytes: one thread reserves `units` at the pool's top; -1 when the pool is full.
__device__ __forceinline__ long reserve_units(unsigned* top, unsigned units, unsigned capacity, int* error)
{
    const unsigned at = atomicAdd(top, units);
    if ((unsigned long long)at + units > capacity) { atomicExch(error, 1); return -1; }
    return at;
}

__device__ __forceinline__ unsigned units_of(int bytes) { return (unsigned)((bytes + 15) / 16); }

// Copies bytes (a multiple of 16) with every thread of the block.
__device__ __forceinline__ void copy_block(const u8* src, u8* dst, int bytes)
{
    for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x)
        reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
}

// Appends rows [rows] of keys and values to the residual of head `head` (descriptors desc[head·max_blocks..]);
// k_rows/v_rows(t) give row t. A residual that fills is encoded in (kf, vf) into fresh pool slots and a new,
// empty residual follows it. Called by every thread of the block.
struct AppendTarget
{
    u8* pool; uint4* desc; int* head_blocks; int* head_tokens; unsigned* top; int* error;
    int max_blocks, tokens, hd, vg, kf, vf; unsigned capacity;
};

__device__ void residual_full(const AppendTarget& a, int head, uint4 r)
{
    __shared__ long slot[1];
    const int kb = block_bytes(a.kf, true, a.tokens, a.hd, a.vg), vb = block_bytes(a.vf, false, a.tokens, a.hd, a.vg);
    const int nb = a.head_blocks[head];
    if (threadIdx.x == 0)
    {
        slot[0] = nb < a.max_blocks ? reserve_units(a.top, units_of(kb) + units_of(vb), a.capacity, a.error) : -1;
        if (nb >= a.max_blocks) atomicExch(a.error, 2);
    }
    __syncthreads();
    const long at = slot[0];
    if (at < 0) return; // reported through the error flag
    const float* rk = reinterpret_cast<const float*>(a.pool + (size_t)r.x * 16);
    const float* rv = reinterpret_cast<const float*>(a.pool + (size_t)r.y * 16);
    encode_block(rk, a.tokens, a.kf, true, a.tokens, a.hd, a.vg, a.pool + (size_t)at * 16);
    encode_block(rv, a.tokens, a.vf, false, a.tokens, a.hd, a.vg, a.pool + (size_t)(at + units_of(kb)) * 16);
    if (threadIdx.x == 0)
    {
        uint4* d = a.desc + (long)head * a.max_blocks;
        d[nb - 1] = make_uint4((unsigned)at, (unsigned)(at + units_of(kb)), desc_meta(a.tokens, a.kf, a.vf), r.w);
        d[nb] = make_uint4(r.x, r.y, desc_meta(0, KV_F32, KV_F32), r.w + (unsigned)a.tokens);
        a.head_blocks[head] = nb + 1;
    }
    __syncthreads();
}

// RoPE of the q and k heads of a fused QKV product qkv [rows, (heads + 2 kv_heads) hd] at positions *pos + t
// (optional per-head RMSNorm first, as qkv_rope_append), queries to q_out [rows, heads, hd]; keys and values
// appended to the paged cache's layer (its tables at desc/head_blocks/head_tokens, heads kv_heads).
// Blocks 0 .. rows·heads - 1 rotate queries; the last kv_heads blocks each append all rows of one KV head in order.
extern "C" __global__ void paged_rope_append(const float* qkv, float* q_out, const float* q_norm, const float* k_norm, const float* inv_freq,
    u8* pool, uint4* desc, int* head_blocks, int* head_tokens, unsigned* top, int* error, unsigned capacity,
    int rows, int heads, int kv_heads, int hd, const int* pos, int interleaved, float eps, int max_blocks, int tokens, int vg, int kf, int vf)
{
    const long stride = (long)(heads + 2 * kv_heads) * hd;
    const int half = hd / 2;
    const bool is_q = blockIdx.x < (unsigned)(rows * heads);
    const int kh = is_q ? 0 : blockIdx.x - rows * heads;
    const int nrows = is_q ? 1 : rows;
    __shared__ float inv_shared;
    AppendTarget a{ pool, desc, head_blocks, head_tokens, top, error, max_blocks, tokens, hd, vg, kf, vf, capacity };
    for (int r = 0; r < nrows; r++)
    {
        const int t = is_q ? blockIdx.x / heads : r;
        const int h = is_q ? blockIdx.x % heads : heads + kh;
        const float* src = qkv + t * stride + (long)h * hd;
        const float* nw = is_q ? q_norm : k_norm;
        if (nw != nullptr)
        {
            float ss = 0.0f;
            for (int i = threadIdx.x; i < hd; i += blockDim.x) ss += src[i] * src[i];
            ss = block_sum(ss);
            if (threadIdx.x == 0) inv_shared = 1.0f / sqrtf(ss / hd + eps);
            __syncthreads();
        }
        const float inv = nw != nullptr ? inv_shared : 1.0f;
        const int p = *pos + t;
        float* kdst = nullptr;
        float* vdst = nullptr;
        uint4 resid = make_uint4(0, 0, 0, 0);
        int nb = 0;
        if (!is_q)
        {
            nb = head_blocks[kh];
            resid = desc[(long)kh * max_blocks + nb - 1];
            const int at = desc_count(resid);
            kdst = reinterpret_cast<float*>(pool + (size_t)resid.x * 16) + (long)at * hd;
            vdst = reinterpret_cast<float*>(pool + (size_t)resid.y * 16) + (long)at * hd;
        }
        for (int i = threadIdx.x; i < half; i += blockDim.x)
        {
            const int i0 = interleaved ? 2 * i : i;
            const int i1 = interleaved ? 2 * i + 1 : i + half;
            float x0 = src[i0], x1 = src[i1];
            if (nw != nullptr) { x0 = x0 * inv * nw[i0]; x1 = x1 * inv * nw[i1]; }
            const float angle = (float)p * inv_freq[i];
            const float c = cosf(angle), s = sinf(angle);
            const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
            float* dst = is_q ? q_out + ((long)t * heads + h) * hd : kdst;
            dst[i0] = y0;
            dst[i1] = y1;
        }
        if (is_q) return;
        const float* vsrc = qkv + t * stride + (long)(heads + kv_heads + kh) * hd;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) vdst[i] = vsrc[i];
        __syncthreads();
        const int count = desc_count(resid) + 1;
        if (count == tokens)
        {
            residual_full(a, kh, resid);
        }
        else if (threadIdx.x == 0)
        {
            desc[(long)kh * max_blocks + nb - 1].z = desc_meta(count, KV_F32, KV_F32);
        }
        if (threadIdx.x == 0) head_tokens[kh] += 1;
        __syncthreads();
    }
}

// Eviction of one head per block: flags[head·max_tokens + i] != 0 drops the head's stored token i. Blocks without
// a dropped token are copied as they are; the kept tokens of each run of affected blocks are decoded and re-encoded
// in their own formats, Tokens at a time, a run of one format pair ending in a partial block (HeadStore.Evict);
// the residual keeps its slot and its kept rows. Blocks go to new_pool (its top already past the residual slots);
// the descriptors are rewritten in place. staging: [heads, 2, tokens, hd] floats.
extern "C" __global__ void paged_evict(const u8* old_pool, u8* new_pool, uint4* desc, int* head_blocks, int* head_tokens,
    const u8* flags, float* staging, unsigned* top, int* error, unsigned capacity, int max_blocks, int max_tokens, int tokens, int hd, int vg)
{
    const int head = blockIdx.x;
    uint4* d = desc + (long)head * max_blocks;
    const u8* drop = flags + (long)head * max_tokens;
    float* sk = staging + (long)head * 2 * tokens * hd;
    float* sv = sk + (long)tokens * hd;
    const int nb = head_blocks[head];
    __shared__ long slot;
    __shared__ int failed;
    if (threadIdx.x == 0) failed = 0;
    __syncthreads(); // every thread reads `failed` in the loop condition below
    int written = 0, start = 0, pending = 0, pkf = -1, pvf = -1;

    // Encodes the pending rows as one block pair of (pkf, pvf) and appends its descriptor.
    auto flush = [&]() {
        if (pending == 0) return;
        const int kb = block_bytes(pkf, true, tokens, hd, vg), vb = block_bytes(pvf, false, tokens, hd, vg);
        if (threadIdx.x == 0) { slot = reserve_units(top, units_of(kb) + units_of(vb), capacity, error); if (slot < 0) failed = 1; }
        __syncthreads();
        if (slot >= 0)
        {
            encode_block(sk, pending, pkf, true, tokens, hd, vg, new_pool + (size_t)slot * 16);
            encode_block(sv, pending, pvf, false, tokens, hd, vg, new_pool + (size_t)(slot + units_of(kb)) * 16);
            if (threadIdx.x == 0) d[written] = make_uint4((unsigned)slot, (unsigned)(slot + units_of(kb)), desc_meta(pending, pkf, pvf), (unsigned)start);
        }
        __syncthreads();
        written++;
        start += pending;
        pending = 0;
    };

    for (int b = 0; b < nb - 1 && !failed; b++)
    {
        const uint4 e = d[b];
        __syncthreads(); // every thread has read d[b] before a flush may overwrite it
        const int cnt = desc_count(e), kf = desc_kfmt(e), vf = desc_vfmt(e);
        int any = 0;
        for (int i = threadIdx.x; i < cnt; i += blockDim.x) any |= drop[e.w + i];
        if (!__syncthreads_or(any))
        {
            flush();
            const int kb = block_bytes(kf, true, tokens, hd, vg), vb = block_bytes(vf, false, tokens, hd, vg);
            if (threadIdx.x == 0) { slot = reserve_units(top, units_of(kb) + units_of(vb), capacity, error); if (slot < 0) failed = 1; }
            __syncthreads();
            if (slot >= 0)
            {
                copy_block(old_pool + (size_t)e.x * 16, new_pool + (size_t)slot * 16, units_of(kb) * 16);
                copy_block(old_pool + (size_t)e.y * 16, new_pool + (size_t)(slot + units_of(kb)) * 16, units_of(vb) * 16);
                if (threadIdx.x == 0) d[written] = make_uint4((unsigned)slot, (unsigned)(slot + units_of(kb)), e.z, (unsigned)start);
            }
            __syncthreads();
            written++;
            start += cnt;
            continue;
        }
        for (int t = 0; t < cnt; t++)
        {
            if (drop[e.w + t]) continue;
            if (kf != pkf || vf != pvf) { flush(); pkf = kf; pvf = vf; }
            for (int c = threadIdx.x; c < hd; c += blockDim.x)
            {
                sk[(long)pending * hd + c] = decode_element(old_pool + (size_t)e.x * 16, kf, true, t, c, tokens, hd, vg);
                sv[(long)pending * hd + c] = decode_element(old_pool + (size_t)e.y * 16, vf, false, t, c, tokens, hd, vg);
            }
            __syncthreads();
            pending++;
            if (pending == tokens) flush();
        }
    }
    flush();
    // The residual: its kept rows move up within its slot, copied into the new pool at the same offsets.
    const uint4 r = d[nb - 1];
    __syncthreads();
    const int rc = desc_count(r);
    const float* ok = reinterpret_cast<const float*>(old_pool + (size_t)r.x * 16);
    const float* ovv = reinterpret_cast<const float*>(old_pool + (size_t)r.y * 16);
    float* nk = reinterpret_cast<float*>(new_pool + (size_t)r.x * 16);
    float* nv = reinterpret_cast<float*>(new_pool + (size_t)r.y * 16);
    int kept = 0;
    for (int t = 0; t < rc; t++)
    {
        if (drop[r.w + t]) continue;
        for (int c = threadIdx.x; c < hd; c += blockDim.x) { nk[(long)kept * hd + c] = ok[(long)t * hd + c]; nv[(long)kept * hd + c] = ovv[(long)t * hd + c]; }
        kept++;
    }
    if (threadIdx.x == 0)
    {
        d[written] = make_uint4(r.x, r.y, desc_meta(kept, KV_F32, KV_F32), (unsigned)start);
        head_blocks[head] = written + 1;
        head_tokens[head] = start + kept;
    }
}
