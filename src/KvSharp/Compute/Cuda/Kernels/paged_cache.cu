// Compression on the device for the paged KV cache (paged_kv.cuh): appending tokens (RoPE, the F32 residual
// block, encoding a full residual in the cache's formats) and eviction (per-head drop flags, runs of affected
// blocks decoded and re-encoded, the result compacted into a fresh pool), and what presses need on the device
// (attention statistics, score pooling and top-k selection, re-quantization; at the end of this file).
// Encoding follows KvSharp.Cache.Blocks.BlockCodec exactly (float64 group statistics summed in element order,
// f16-rounded stored parameters, round-half-even codes) and decoding follows BlockCodec.Decode (float32, no
// fused multiply-add), so the bytes equal the CPU codec's.
#include "paged_kv.cuh"
#include "gemv.cuh"
#include "gemv_mma.cuh"

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

// BlockCodec's code for the float64 numerator d over a float16 scale s > 0: rint(RN(d / s)) (the float64 quotient rounded
// to the nearest integer, ties to even) clamped to [lo, hi], without a float64 division. A float64 quotient of a float64
// d by a float16 s rounds onto a half-integer t only when it is t: d ≠ t·s differ by at least ulp(d), which puts d / s
// more than half an ulp of t away from t. So the code is the integer nearest the exact quotient, ties to even. An
// approximate float32 quotient gives a candidate within one of it (or past the clamp), and the exact signs of
// d − (q ± 0.5)·s settle it: (q ± 0.5)·s is exact in float64, and one fused multiply-add rounds d minus it once, which
// keeps its sign and its zero. Fewer instructions than __ddiv_rn (whose slow path every zero quotient, each group's minimum,
// took); the encode's time is elsewhere (its passes' dependent chains, docs/benchmarks.md).
__device__ __forceinline__ int nearest_code(double d, double s, int lo, int hi)
{
    // fmaxf returns its other operand for NaN: a NaN numerator gives lo, as fmax(rint(NaN), lo) did.
    int q = (int)fminf(fmaxf(rintf(__fdividef((float)d, (float)s)), (float)(lo - 1)), (float)(hi + 1));
    const double above = fma(-((double)q + 0.5), s, d), below = fma(-((double)q - 0.5), s, d);
    if (above > 0.0 || (above == 0.0 && (q & 1))) q++;
    else if (below < 0.0 || (below == 0.0 && (q & 1))) q--;
    return min(max(q, lo), hi);
}

// encode_block's INT8/4/2 parameters pass, unrolled (encode_block's `unrolled`): group g's min and max over its present
// members (a value group's are all present or all absent), as float32 (a float32 min or max is exact), in four
// independent chains, then the stored f16 scale and min exactly as the element-order loop computes them. Neither depends
// on the order, so a value group starts at its member g mod vg: a warp's threads (one group each, vg floats apart, one
// bank) then read 32 banks.
// ld: the rows' stride in floats (-1: hd; the batch encode blocks stage a part's channels only, rows pre-offset by its first).
__device__ __forceinline__ void int_group_params(const float* rows, int n, bool keys, int hd, int vg, int g, int qmax, u16& sb, u16& mb, int ld = -1)
{
    // Keys: channel g of tokens 0 .. n - 1. Values: the vg channels of group g's token, if present.
    const int per_row = hd / vg, t = keys ? 0 : g / per_row, row = ld < 0 ? hd : ld;
    const int count = keys ? n : t < n ? vg : 0, stride = keys ? row : 1;
    const float* x = keys ? rows + g : rows + t * row + (g % per_row) * vg;
    const int first = keys || count == 0 ? 0 : g % count;
    auto member = [&](int k) { const int i = first + k; return x[(i < count ? i : i - count) * stride]; };
    const float inf = __int_as_float(0x7f800000);
    float lo0 = inf, lo1 = inf, lo2 = inf, lo3 = inf, hi0 = -inf, hi1 = -inf, hi2 = -inf, hi3 = -inf;
    int k = 0;
    for (; k + 4 <= count; k += 4)
    {
        const float x0 = member(k), x1 = member(k + 1), x2 = member(k + 2), x3 = member(k + 3);
        lo0 = fminf(lo0, x0); lo1 = fminf(lo1, x1); lo2 = fminf(lo2, x2); lo3 = fminf(lo3, x3);
        hi0 = fmaxf(hi0, x0); hi1 = fmaxf(hi1, x1); hi2 = fmaxf(hi2, x2); hi3 = fmaxf(hi3, x3);
    }
    for (; k < count; k++) { lo0 = fminf(lo0, member(k)); hi0 = fmaxf(hi0, member(k)); }
    sb = 0;
    mb = 0;
    if (count > 0)
    {
        const double lo = fminf(fminf(lo0, lo1), fminf(lo2, lo3)), hi = fmaxf(fmaxf(hi0, hi1), fmaxf(hi2, hi3));
        sb = f16_saturated(__ddiv_rn(__dsub_rn(hi, lo), (double)qmax));
        mb = f16_saturated(lo);
    }
}

// encode_block's codes pass for INT formats of BITS bits, unrolled (int_code_word: word wi; int_codes: every word of the
// block over the block's threads): one thread per 32-bit word (one token's 32 / BITS channels: paged_rope_append and
// paged_rope_append_split, its callers, run only with hd a multiple of 16), its elements and group parameters
// loaded together, then its codes computed side by side. The element-by-element loop waited on its loads and its float64
// chain once per code (~640 cycles a code at 256 threads on an H100, clock64 probes).
template <int BITS>
__device__ __forceinline__ void int_code_word(const float* rows, int n, bool keys, int hd, int vg, u8* dst, const u16* scales, const u16* mins, int wi,
    int ld = -1)
{
    constexpr int per_word = 32 / BITS, qmax = (1 << BITS) - 1;
    const int per_row = hd / vg;
    const int e0 = wi * per_word, t = e0 / hd, c0 = e0 - t * hd, at = ld < 0 ? e0 : t * ld + c0; // ld as int_group_params'
    unsigned word = 0;
    if (t < n)
    {
        // Two codes at a time: their loads together, then their float64 chains side by side (four at a time took the
        // kernel past 128 registers, and under a 128-register bound the staging copy lost its registers).
#pragma unroll
        for (int i0 = 0; i0 < per_word; i0 += 2)
        {
            float x[2];
            u16 sbits[2], mbits[2];
#pragma unroll
            for (int j = 0; j < 2; j++)
            {
                const int c = c0 + i0 + j, g = keys ? c : t * per_row + c / vg;
                x[j] = rows[at + i0 + j];
                sbits[j] = scales[g];
                mbits[j] = mins[g];
            }
#pragma unroll
            for (int j = 0; j < 2; j++)
            {
                const double scale16 = f16_to_f32(sbits[j]);
                const int q = scale16 > 0.0 ? nearest_code(__dsub_rn((double)x[j], (double)f16_to_f32(mbits[j])), scale16, 0, qmax) : 0;
                word |= (unsigned)q << ((i0 + j) * BITS);
            }
        }
    }
    reinterpret_cast<unsigned*>(dst)[wi] = word;
}

template <int BITS>
__device__ __forceinline__ void int_codes(const float* rows, int n, bool keys, int tokens, int hd, int vg, u8* dst, const u16* scales, const u16* mins)
{
    const int words = tokens * hd / (32 / BITS);
    for (int wi = threadIdx.x; wi < words; wi += blockDim.x) int_code_word<BITS>(rows, n, keys, hd, vg, dst, scales, mins, wi);
}

// Encodes rows [n, hd] (float32, n <= tokens) into one block of format f at dst (block_bytes bytes, all
// written; absent rows and groups are zero bytes). Called by every thread of the block.
// unrolled: the INT8/4/2 passes of int_group_params and int_codes instead of the element-by-element loops (the same
// bytes). Only paged_rope_append asks for them: the fused QKV product's encode is left as it is, because that kernel's
// code shape moved the batch-1 steps by up to 13% (docs/benchmarks.md).
// Element e of a float-format block (F32, BF16, F16, FP8) encoded from x: encode_block's conversion and the batch encode
// blocks' (0 encodes as 0 in each, which encode_block's rows past n take).
__device__ __forceinline__ void store_element(u8* dst, int f, int e, float x)
{
    if (f == KV_F32) reinterpret_cast<unsigned*>(dst)[e] = __float_as_uint(x);
    else if (f == KV_F16) reinterpret_cast<u16*>(dst)[e] = f32_to_f16(x);
    else if (f == KV_BF16) reinterpret_cast<u16*>(dst)[e] = (u16)f32_to_bf16_exact(x);
    else dst[e] = (u8)f32_to_fp8(x);
}

__device__ void encode_block(const float* rows, int n, int f, bool keys, int tokens, int hd, int vg, u8* dst, bool unrolled = false)
{
    const int bits = kv_bits(f), cbytes = code_bytes(f, tokens, hd), total = tokens * hd;
    if (!kv_quantized(f))
    {
        for (int e = threadIdx.x; e < total; e += blockDim.x) store_element(dst, f, e, e < n * hd ? rows[e] : 0.0f);
        __syncthreads();
        return;
    }
    const int groups = group_count(f, keys, tokens, hd, vg);
    const int members = keys ? tokens : vg;
    u16* scales = reinterpret_cast<u16*>(dst + cbytes);
    u16* mins = scales + groups;
    const int qmax = (1 << bits) - 1;
    // INT8/4/2 (kv_params 2 but binary; the VidKV formats never get here: the host refuses VidKV appends). Written this way
    // because f >= KV_INT8 && f <= KV_INT2 took paged_rope_append from 126 to 151 registers under NVRTC 12.4.
    if (unrolled && kv_params(f) == 2 && f != KV_BINARY)
    {
        for (int g = threadIdx.x; g < groups; g += blockDim.x) int_group_params(rows, n, keys, hd, vg, g, qmax, scales[g], mins[g]);
        __syncthreads();
        if (f == KV_INT8) int_codes<8>(rows, n, keys, tokens, hd, vg, dst, scales, mins);
        else if (f == KV_INT4) int_codes<4>(rows, n, keys, tokens, hd, vg, dst, scales, mins);
        else int_codes<2>(rows, n, keys, tokens, hd, vg, dst, scales, mins);
        __syncthreads();
        return;
    }
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
            if (f == KV_TERNARY) q = (scale16 > 0.0 ? nearest_code(x, scale16, -1, 1) : 0) + 1;
            else if (f == KV_BINARY) q = x >= (double)f16_to_f32(mins[g]) ? 1 : 0;
            else q = scale16 > 0.0 ? nearest_code(__dsub_rn(x, (double)f16_to_f32(mins[g])), scale16, 0, qmax) : 0;
            word |= (unsigned)q << (i * bits);
        }
        reinterpret_cast<unsigned*>(dst)[wi] = word;
    }
    __syncthreads();
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

// ---- Block pairs and rows, as eviction and re-quantization rewrite a head (every function: every thread of the block). ----

// A key + value slot pair for blocks of kb and vb bytes at the pool's top, the same for every thread; -1 when the pool is
// full (error flag set).
__device__ long reserve_pair(unsigned* top, int kb, int vb, unsigned capacity, int* error)
{
    __shared__ long slot;
    if (threadIdx.x == 0) slot = reserve_units(top, units_of(kb) + units_of(vb), capacity, error);
    __syncthreads();
    const long at = slot;
    __syncthreads(); // every thread has read it before the next call overwrites it
    return at;
}

// Encodes the staged rows sk/sv [n, hd] as one block pair in (kf, vf) into fresh slots of `pool` and writes its descriptor
// *d (first token `start`); false when the pool is full.
__device__ bool encode_pair(const float* sk, const float* sv, int n, int kf, int vf, int tokens, int hd, int vg, u8* pool,
    unsigned* top, unsigned capacity, int* error, uint4* d, int start, bool unrolled = false)
{
    const int kb = block_bytes(kf, true, tokens, hd, vg), vb = block_bytes(vf, false, tokens, hd, vg);
    const long at = reserve_pair(top, kb, vb, capacity, error);
    if (at >= 0)
    {
        encode_block(sk, n, kf, true, tokens, hd, vg, pool + (size_t)at * 16, unrolled);
        encode_block(sv, n, vf, false, tokens, hd, vg, pool + (size_t)(at + units_of(kb)) * 16, unrolled);
        if (threadIdx.x == 0) *d = make_uint4((unsigned)at, (unsigned)(at + units_of(kb)), desc_meta(n, kf, vf), (unsigned)start);
    }
    __syncthreads();
    return at >= 0;
}

// Copies block pair e as it is from old_pool into fresh slots of new_pool, its descriptor to *d (first token `start`);
// false when the pool is full.
__device__ bool copy_pair(const u8* old_pool, u8* new_pool, uint4 e, int tokens, int hd, int vg, unsigned* top, unsigned capacity,
    int* error, uint4* d, int start)
{
    const int kb = block_bytes(desc_kfmt(e), true, tokens, hd, vg), vb = block_bytes(desc_vfmt(e), false, tokens, hd, vg);
    const long at = reserve_pair(top, kb, vb, capacity, error);
    if (at >= 0)
    {
        copy_block(old_pool + (size_t)e.x * 16, new_pool + (size_t)at * 16, units_of(kb) * 16);
        copy_block(old_pool + (size_t)e.y * 16, new_pool + (size_t)(at + units_of(kb)) * 16, units_of(vb) * 16);
        if (threadIdx.x == 0) *d = make_uint4((unsigned)at, (unsigned)(at + units_of(kb)), e.z, (unsigned)start);
    }
    __syncthreads();
    return at >= 0;
}

// Decodes token t of block pair e (BlockCodec.Decode) into row `row` of the staging rows sk/sv.
__device__ void stage_row(const u8* pool, uint4 e, int t, float* sk, float* sv, int row, int tokens, int hd, int vg)
{
    for (int c = threadIdx.x; c < hd; c += blockDim.x)
    {
        sk[(long)row * hd + c] = decode_element(pool + (size_t)e.x * 16, desc_kfmt(e), true, t, c, tokens, hd, vg);
        sv[(long)row * hd + c] = decode_element(pool + (size_t)e.y * 16, desc_vfmt(e), false, t, c, tokens, hd, vg);
    }
    __syncthreads();
}

// The residual r's rows not flagged in skip[r.w ..] moved up within its slot, written to new_pool at the same offsets;
// returns how many stay.
__device__ int compact_residual(const u8* old_pool, u8* new_pool, uint4 r, const u8* skip, int hd)
{
    const float* ok = reinterpret_cast<const float*>(old_pool + (size_t)r.x * 16);
    const float* ov = reinterpret_cast<const float*>(old_pool + (size_t)r.y * 16);
    float* nk = reinterpret_cast<float*>(new_pool + (size_t)r.x * 16);
    float* nv = reinterpret_cast<float*>(new_pool + (size_t)r.y * 16);
    int kept = 0;
    for (int t = 0; t < desc_count(r); t++)
    {
        if (skip[r.w + t]) continue;
        for (int c = threadIdx.x; c < hd; c += blockDim.x) { nk[(long)kept * hd + c] = ok[(long)t * hd + c]; nv[(long)kept * hd + c] = ov[(long)t * hd + c]; }
        kept++;
    }
    return kept;
}

// Appends rows [rows] of keys and values to the residual of head `head` (descriptors desc[head·max_blocks..]);
// k_rows/v_rows(t) give row t. A residual that fills is encoded in (kf, vf) into fresh pool slots and a new,
// empty residual follows it. Called by every thread of the block.
struct AppendTarget
{
    u8* pool; uint4* desc; int* head_blocks; int* head_tokens; unsigned* top; int* error;
    int max_blocks, tokens, hd, vg, kf, vf; unsigned capacity;
};

// Floats of a residual block that residual_full stages in shared memory (keys and values each): 32 tokens of 128 channels.
#define RESIDUAL_STAGE 4096

// The block's residual rows staged for encoding (residual_full), which the fused append's product lends to its staged
// norm before (PagedQkvAppend::stage): one array, so that the kernel's static shared memory stays under 48 KB.
__device__ __forceinline__ float4* residual_stage()
{
    __shared__ float4 staged[2 * RESIDUAL_STAGE / 4];
    return staged;
}
static_assert(2 * RESIDUAL_STAGE >= GEMV_STAGE, "the residual's staging holds the product's staged activations");

// After residual r of a head with nb blocks was encoded into block nb - 1 (its descriptor already rewritten): the same
// slots become an empty residual, block nb, whose first token follows the encoded block's, and the head counts it.
// Thread 0 only; residual_full and the split batch append's last block.
__device__ __forceinline__ void open_residual(uint4* d, int* head_blocks, int head, int nb, uint4 r, int tokens)
{
    d[nb] = make_uint4(r.x, r.y, desc_meta(0, KV_F32, KV_F32), r.w + (unsigned)tokens);
    head_blocks[head] = nb + 1;
}

__device__ void residual_full(const AppendTarget& a, int head, uint4 r, bool unrolled)
{
    // Plain loads of the table and the rows: in the fused append only its last block gets here, after the arrival barrier
    // and its own __threadfence (PagedQkvAppend::finish), which orders the other blocks' row writes before these loads
    // (fence-fence synchronization through the arrival counter); paged_rope_append's block wrote the rows itself. The
    // ld.global.cg loads and the fence before the count that gpurace added here made KIVI-2/4 at 128K, batch 1, 10-12%
    // slower a step on an H100 (same machine; paged_qkv_rope_append_bf16 64 registers instead of 88 under NVRTC 12.4, the
    // kernels alone as fast: the loss is in how they overlap), and the race they were meant for was finish's missing
    // barrier (docs/benchmarks.md, issue 7, "The fused append's cost: KIVI at 128K").
    const int nb = a.head_blocks[head];
    if (nb >= a.max_blocks)
    {
        if (threadIdx.x == 0) atomicExch(a.error, 2);
        return;
    }
    uint4* d = a.desc + (long)head * a.max_blocks;
    const float* rk = reinterpret_cast<const float*>(a.pool + (size_t)r.x * 16);
    const float* rv = reinterpret_cast<const float*>(a.pool + (size_t)r.y * 16);
    // The rows go to shared memory first, with 8 independent 16-byte loads per thread in flight: encode_block's element
    // loops wait for memory once per iteration, which cost 25 us per F16 block pair read from the pool (H100, ncu).
    float4* staged = residual_stage();
    const int n4 = a.tokens * a.hd / 4;
    if (n4 <= RESIDUAL_STAGE / 4)
    {
        const float4* src[2] = { reinterpret_cast<const float4*>(rk), reinterpret_cast<const float4*>(rv) };
#pragma unroll
        for (int m = 0; m < 2; m++)
            for (int base = 0; base < n4; base += 8 * (int)blockDim.x)
            {
                float4 v[8];
#pragma unroll
                for (int k = 0; k < 8; k++)
                {
                    const int i = base + k * (int)blockDim.x + (int)threadIdx.x;
                    if (i < n4) v[k] = src[m][i];
                }
#pragma unroll
                for (int k = 0; k < 8; k++)
                {
                    const int i = base + k * (int)blockDim.x + (int)threadIdx.x;
                    if (i < n4) staged[m * n4 + i] = v[k];
                }
            }
        __syncthreads();
        rk = reinterpret_cast<const float*>(staged);
        rv = rk + 4 * n4;
    }
    if (!encode_pair(rk, rv, a.tokens, a.kf, a.vf, a.tokens, a.hd, a.vg, a.pool, a.top, a.capacity, a.error, d + nb - 1, (int)r.w, unrolled))
        return; // reported through the error flag
    if (threadIdx.x == 0)
    {
        // No fence before the count: no other block of the grid reads this head's tables after counting itself, and the
        // attention after the grid reads them past griddepcontrol.wait, which sees all of the grid's writes.
        open_residual(d, a.head_blocks, head, nb, r, a.tokens);
    }
    __syncthreads();
}

// After one row was written into residual r (the last block, nb - 1, of head `head`): the head holds one more token, and
// the residual either counts it or, now full, is encoded into fresh pool slots with a new empty residual (residual_full).
// Called by every thread of the block.
__device__ void residual_advance(const AppendTarget& a, int head, int nb, uint4 r, bool unrolled = false)
{
    const int count = desc_count(r) + 1;
    if (count == a.tokens) residual_full(a, head, r, unrolled);
    else if (threadIdx.x == 0) a.desc[(long)head * a.max_blocks + nb - 1].z = desc_meta(count, KV_F32, KV_F32);
    if (threadIdx.x == 0) a.head_tokens[head] += 1;
}

// 1 / sqrt(mean(src[0 .. hd)²) + eps) for q/k RMSNorm, by every thread of the block (a barrier inside; `shared` carries
// thread 0's result to the others).
__device__ __forceinline__ float rms_inverse(const float* src, int hd, float eps, float& shared)
{
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) ss += src[i] * src[i];
    ss = block_sum(ss);
    if (threadIdx.x == 0) shared = 1.0f / sqrtf(ss / hd + eps);
    __syncthreads();
    return shared;
}

// RoPE of the q and k heads of a fused QKV product qkv [rows, (heads + 2 kv_heads) hd] at positions *pos + t
// (optional per-head RMSNorm first, as qkv_rope_append), queries to q_out [rows, heads, hd]; keys and values
// appended to the paged cache's layer (its tables at desc/head_blocks/head_tokens, heads kv_heads).
// Blocks 0 .. rows·heads - 1 rotate queries; the last kv_heads blocks each append all rows of one KV head in order.
// With batch, row t is the one new token of sequence t at position pos[t], and rows·kv_heads blocks append it.
// Launched with CudaPagedKernels.AppendThreads (256) threads a block: two blocks fit an SM while it needs at most 128
// registers (NVRTC 12.4: 126). Not enforced by a bound: under __launch_bounds__(256, 2) the staging copy's loop lost its
// registers and re-read the thread index (docs/benchmarks.md, stop 25); re-check with scripts/sass-report.sh after changes.
extern "C" __global__ void paged_rope_append(const float* qkv, float* q_out, const float* q_norm, const float* k_norm, const float* inv_freq,
    u8* pool, uint4* desc, int* head_blocks, int* head_tokens, unsigned* top, int* error, unsigned capacity,
    int rows, int heads, int kv_heads, int hd, const int* pos, int interleaved, float eps, int max_blocks, int tokens, int vg, int kf, int vf,
    int batch)
{
    // Launched programmatically (CudaPagedKernels): the grid may be resident while the QKV product drains; nothing is read
    // before that product has finished. The attention after it may then be scheduled at once (it waits in turn).
    pdl_wait();
    pdl_trigger();
    const long stride = (long)(heads + 2 * kv_heads) * hd;
    const int half = hd / 2;
    const bool is_q = blockIdx.x < (unsigned)(rows * heads);
    // K/V blocks: one per KV head appending all rows in order, or with batch one per (sequence, KV head) appending its
    // sequence's row to the sequence's head (table head sequence · kv_heads + kv head, as paged_head reads them).
    const int head = is_q ? 0 : blockIdx.x - rows * heads, kh = head % kv_heads;
    const int nrows = is_q || batch ? 1 : rows;
    __shared__ float inv_shared;
    AppendTarget a{ pool, desc, head_blocks, head_tokens, top, error, max_blocks, tokens, hd, vg, kf, vf, capacity };
    for (int r = 0; r < nrows; r++)
    {
        const int t = is_q ? blockIdx.x / heads : batch ? head / kv_heads : r;
        const int h = is_q ? blockIdx.x % heads : heads + kh;
        const float* src = qkv + t * stride + (long)h * hd;
        const float* nw = is_q ? q_norm : k_norm;
        const float inv = nw != nullptr ? rms_inverse(src, hd, eps, inv_shared) : 1.0f;
        const int p = batch ? pos[t] : *pos + t;
        float* kdst = nullptr;
        float* vdst = nullptr;
        uint4 resid = make_uint4(0, 0, 0, 0);
        int nb = 0;
        if (!is_q)
        {
            nb = head_blocks[head];
            resid = desc[(long)head * max_blocks + nb - 1];
            const int at = desc_count(resid);
            kdst = reinterpret_cast<float*>(pool + (size_t)resid.x * 16) + (long)at * hd;
            vdst = reinterpret_cast<float*>(pool + (size_t)resid.y * 16) + (long)at * hd;
        }
        for (int i = threadIdx.x; i < half; i += blockDim.x)
        {
            int i0, i1;
            rope_channels(i, hd, interleaved, i0, i1);
            float x0 = src[i0], x1 = src[i1];
            if (nw != nullptr) { x0 = x0 * inv * nw[i0]; x1 = x1 * inv * nw[i1]; }
            float y0, y1;
            rope_rotate(p, inv_freq[i], x0, x1, y0, y1);
            float* dst = is_q ? q_out + ((long)t * heads + h) * hd : kdst;
            dst[i0] = y0;
            dst[i1] = y1;
        }
        if (is_q) return;
        const float* vsrc = qkv + t * stride + (long)(heads + kv_heads + kh) * hd;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) vdst[i] = vsrc[i];
        __syncthreads();
        residual_advance(a, head, nb, resid, true);
        __syncthreads();
    }
}

// The batch append with its encode split (CudaPagedKernels.SplitBatchEncode; on an H100 the append with a fill went from
// 22-23 to ~14 µs, stop 27):
// paged_rope_append's batch launch for caches whose key and value formats are INT8/4/2, with APPEND_SPLIT blocks per
// (sequence, KV head) instead of one. Why: at 8 × 32K the KVzip 0.3 + INT4 append took 22-23 µs a layer where some head's
// residual filled (7 without), in most layers of every step: one block of 256 threads encoded the head's two blocks in
// four dependent passes (stop 25's probes). Here block `part` of a head rotates and stores channels
// [part · w, part · w + w) of the new row (w = hd / APPEND_SPLIT; a rotation pair's other channel is read from the
// product's output, so no block waits for another), and when the residual fills, encodes the groups and code words of
// those channels of both blocks: the keys' w channel groups, the values' w / vg groups of each token (the host asks for
// w a multiple of vg and of 16), one pass of parameters and one of codes, with encode_block's unrolled functions (the
// same bytes: each group and word is computed as there). The blocks of a head share one slot reservation: the first to
// claim it (claims[head]: 0 free, 1 being reserved, 2 the pool was full, slot + 3) reserves, the others wait for it (it
// is running: it claimed). Each block counts itself in arrivals[head] after a fence; the head's last resets both words
// and updates the tables (the residual's count, or the encoded block's descriptor, the new residual and the block count)
// and the token count: every block read the tables before counting itself. Query blocks as in paged_rope_append.
// With a fill the append still took ~14 µs (6.0-6.9 without): about ten dependent round trips to L2 in a row (the
// tables, the new row, the claim's three atomics, the staged rows, the parameters read back for the codes, the fence, the
// arrival). So, once the tables say the row fills the residual, the last thread (no channel of the new row at 256
// threads) claims the slot while the others stage the earlier rows, the loops that store the new row also stage it, and
// the codes pass reads the parameters from shared memory: about three round trips fewer. On an H100 (stop 28, ncu, 8 ×
// 32K KVzip 0.3 + INT4, 2-layer model) the filling launches went from a median of 14.0 to 13.2 µs, the step 0.1% faster.
#define APPEND_SPLIT 4
// Group parameters the split append keeps in shared memory for its codes pass (more: read back from the block).
#define SPLIT_KEY_GROUPS 256
#define SPLIT_VALUE_GROUPS 512
// The split batch append's claim of one head's slot (claims[head]: 0 free, 1 being reserved, 2 the pool was full, slot + 3)
// for `units` of the pool: the first block of the head to claim reserves, the others wait for it (it is running: it
// claimed). By one thread; returns the claim word.
__device__ __forceinline__ unsigned long long split_claim(unsigned long long* claim, unsigned* top, unsigned units, unsigned capacity, int* error)
{
    unsigned long long v = atomicCAS(claim, 0ull, 1ull);
    if (v == 0ull)
    {
        const long r = reserve_units(top, units, capacity, error);
        v = r < 0 ? 2ull : (unsigned long long)r + 3ull;
        atomicExch(claim, v);
    }
    while (v == 1ull)
    {
        __nanosleep(32);
        v = atomicAdd(claim, 0ull);
    }
    return v;
}

// One split block's part of a full residual's encode into the claimed slot (claim word slot_s, not 2): the group parameters and
// code words of channels c0 .. c0 + w - 1 of both blocks, from the residual's rows staged at sk (keys) and sv (values), rows
// of ld floats (-1: hd, as residual_full stages them; the batch encode blocks stage the part's w channels only, sk and sv
// offset back by c0). Every thread of the block; a barrier inside.
// NEAR: the parameters also kept in shared memory for the codes pass (3 KB; the batch encode blocks, short of shared memory,
// read them back instead).
template <bool NEAR = true>
__device__ __forceinline__ void split_encode_part(const float* sk, const float* sv, unsigned long long slot_s, u8* pool, int kf, int vf, int tokens,
    int hd, int vg, int c0, int w, int ld = -1)
{
    const int kbytes = block_bytes(kf, true, tokens, hd, vg);
    const long slot = (long)(slot_s - 3ull);
    u8* kdst = pool + (size_t)slot * 16;
    u8* vdst = pool + (size_t)(slot + units_of(kbytes)) * 16;
    const int gk = group_count(kf, true, tokens, hd, vg), gv = group_count(vf, false, tokens, hd, vg);
    u16* ks = reinterpret_cast<u16*>(kdst + code_bytes(kf, tokens, hd));
    u16* vs = reinterpret_cast<u16*>(vdst + code_bytes(vf, tokens, hd));
    // The parameters also kept in shared memory, laid out as in the block, for the codes pass (no read back
    // through L2 after the barrier) where they fit.
    u16* kparams = nullptr;
    u16* vparams = nullptr;
    if constexpr (NEAR)
    {
        __shared__ u16 kshared[2 * SPLIT_KEY_GROUPS], vshared[2 * SPLIT_VALUE_GROUPS];
        kparams = kshared;
        vparams = vshared;
    }
    const bool local = NEAR && gk <= SPLIT_KEY_GROUPS && gv <= SPLIT_VALUE_GROUPS;
    // Parameters: the key groups of channels c0 .. c0 + w - 1, then each token's value groups among them.
    const int vper = w / vg, per_row = hd / vg;
    for (int i = threadIdx.x; i < w + tokens * vper; i += blockDim.x)
    {
        const bool key = i < w;
        const int j = i - w, g = key ? c0 + i : (j / vper) * per_row + c0 / vg + j % vper, n = key ? gk : gv;
        u16 sb, mb;
        int_group_params(key ? sk : sv, tokens, key, hd, vg, g, (1 << kv_bits(key ? kf : vf)) - 1, sb, mb, ld);
        u16* params = key ? ks : vs;
        params[g] = sb;
        params[n + g] = mb;
        if (local)
        {
            u16* near = key ? kparams : vparams;
            near[g] = sb;
            near[n + g] = mb;
        }
    }
    __syncthreads();
    const u16* kp = local ? kparams : ks;
    const u16* vp = local ? vparams : vs;
    // Codes: each token's words of these channels, keys then values.
    const int kwords = w / (32 / kv_bits(kf)), vwords = w / (32 / kv_bits(vf));
    for (int i = threadIdx.x; i < tokens * (kwords + vwords); i += blockDim.x)
    {
        const bool key = i < tokens * kwords;
        const int j = key ? i : i - tokens * kwords, per = key ? kwords : vwords, f = key ? kf : vf;
        const int r = j / per, wi = (r * hd + c0) / (32 / kv_bits(f)) + j % per;
        if (key)
        {
            if (f == KV_INT8) int_code_word<8>(sk, tokens, true, hd, vg, kdst, kp, kp + gk, wi, ld);
            else if (f == KV_INT4) int_code_word<4>(sk, tokens, true, hd, vg, kdst, kp, kp + gk, wi, ld);
            else int_code_word<2>(sk, tokens, true, hd, vg, kdst, kp, kp + gk, wi, ld);
        }
        else
        {
            if (f == KV_INT8) int_code_word<8>(sv, tokens, false, hd, vg, vdst, vp, vp + gv, wi, ld);
            else if (f == KV_INT4) int_code_word<4>(sv, tokens, false, hd, vg, vdst, vp, vp + gv, wi, ld);
            else int_code_word<2>(sv, tokens, false, hd, vg, vdst, vp, vp + gv, wi, ld);
        }
    }
}

// The head's last split block after an encode: the encoded pair (its slot from the claim, which this resets) replaces the
// residual as block nb - 1 and the same slots open as an empty residual. Thread 0 only.
__device__ __forceinline__ void install_encoded(uint4* d, int* head_blocks, unsigned long long* claim, int head, int nb, uint4 resid,
    unsigned kunits, int tokens, int kf, int vf)
{
    const unsigned long long v = atomicExch(claim, 0ull); // through L2, where the claims were made
    if (v == 2ull) return; // the pool was full (the error flag is set)
    const unsigned slot = (unsigned)(v - 3ull);
    d[nb - 1] = make_uint4(slot, slot + kunits, desc_meta(tokens, kf, vf), resid.w);
    open_residual(d, head_blocks, head, nb, resid, tokens);
}

extern "C" __global__ void paged_rope_append_split(const float* qkv, float* q_out, const float* q_norm, const float* k_norm, const float* inv_freq,
    u8* pool, uint4* desc, int* head_blocks, int* head_tokens, unsigned* top, int* error, unsigned capacity,
    int rows, int heads, int kv_heads, int hd, const int* pos, int interleaved, float eps, int max_blocks, int tokens, int vg, int kf, int vf,
    int* arrivals, unsigned long long* claims, int early)
{
    const long stride = (long)(heads + 2 * kv_heads) * hd;
    const int half = hd / 2;
    const bool is_q = blockIdx.x < (unsigned)(rows * heads);
    const int kb = is_q ? 0 : blockIdx.x - rows * heads, head = kb / APPEND_SPLIT, part = kb % APPEND_SPLIT;
    const int t = is_q ? blockIdx.x / heads : head / kv_heads, h = is_q ? blockIdx.x % heads : heads + head % kv_heads;
    const int w = hd / APPEND_SPLIT, c0 = part * w;
    const int kbytes = block_bytes(kf, true, tokens, hd, vg), vbytes = block_bytes(vf, false, tokens, hd, vg);
    int p = 0, nb = 0, at = 0;
    bool full = false;
    uint4 resid = make_uint4(0, 0, 0, 0);
    float* kres = nullptr;
    float* vres = nullptr;
    __shared__ unsigned long long slot_s;
    // This block's channels of the residual's rows, staged where residual_full stages them, so encode_block's functions
    // read them unchanged: the earlier rows read back now, the new row written here by the loops below.
    __shared__ float staged[2 * RESIDUAL_STAGE];
    const int claimer = blockDim.x - 1;
    // Everything but the new row: the position, the head's tables and, when the row fills the residual (known from the
    // tables alone), the slot's claim and the earlier rows' staging. With `early` (the host's word that the kernel before
    // this one, the batch's QKV product, writes none of it: CudaPagedKvCache's decode step) this runs before
    // griddepcontrol.wait, during that product's tail: these words were last written by this layer's append a step ago
    // (the tables, the residual's rows), any layer's append (the pool's top, the claims) or the step's end (the
    // positions), all at least two launches back, and every kernel triggers its dependents only after its own wait, so
    // those launches have completed. Reads through L2 (__ldcg), so no L1 line of an earlier kernel serves them.
    auto prepare = [&]() {
        p = __ldcg(pos + t);
        if (is_q) return;
        nb = __ldcg(head_blocks + head);
        resid = __ldcg(desc + (long)head * max_blocks + nb - 1);
        at = desc_count(resid);
        kres = reinterpret_cast<float*>(pool + (size_t)resid.x * 16);
        vres = reinterpret_cast<float*>(pool + (size_t)resid.y * 16);
        full = at + 1 == tokens && nb < max_blocks;
        if (!full) return;
        // The slot reservation's three dependent atomics by one thread (the last: it has no channel of the new row at
        // 256 threads), while the others stage the earlier rows.
        if (threadIdx.x == claimer) slot_s = split_claim(claims + head, top, units_of(kbytes) + units_of(vbytes), capacity, error);
        else
            for (int i = threadIdx.x; i < at * w; i += blockDim.x - 1)
            {
                const int r = i / w, c = c0 + i % w;
                staged[r * hd + c] = __ldcg(kres + (long)r * hd + c);
                staged[RESIDUAL_STAGE + r * hd + c] = __ldcg(vres + (long)r * hd + c);
            }
    };
    if (early) prepare();
    pdl_wait();
    pdl_trigger();
    if (!early) prepare();
    const float* src = qkv + t * stride + (long)h * hd;
    const float* nw = is_q ? q_norm : k_norm;
    __shared__ float inv_shared;
    const float inv = nw != nullptr ? rms_inverse(src, hd, eps, inv_shared) : 1.0f;
    for (int i = threadIdx.x; i < half; i += blockDim.x)
    {
        int i0, i1;
        rope_channels(i, hd, interleaved, i0, i1);
        const bool in0 = is_q || (i0 >= c0 && i0 < c0 + w), in1 = is_q || (i1 >= c0 && i1 < c0 + w);
        if (!in0 && !in1) continue;
        float x0 = src[i0], x1 = src[i1];
        if (nw != nullptr) { x0 = x0 * inv * nw[i0]; x1 = x1 * inv * nw[i1]; }
        float y0, y1;
        rope_rotate(p, inv_freq[i], x0, x1, y0, y1);
        float* dst = is_q ? q_out + ((long)t * heads + h) * hd : kres + (long)at * hd;
        if (in0) dst[i0] = y0;
        if (in1) dst[i1] = y1;
        if (full)
        {
            if (in0) staged[at * hd + i0] = y0;
            if (in1) staged[at * hd + i1] = y1;
        }
    }
    if (is_q) return;
    const float* vsrc = qkv + t * stride + (long)(heads + kv_heads + head % kv_heads) * hd;
    for (int c = c0 + (int)threadIdx.x; c < c0 + w; c += blockDim.x)
    {
        const float v = vsrc[c];
        vres[(long)at * hd + c] = v;
        if (full) staged[RESIDUAL_STAGE + at * hd + c] = v;
    }
    if (full)
    {
        __syncthreads();
        if (slot_s != 2ull) split_encode_part(staged, staged + RESIDUAL_STAGE, slot_s, pool, kf, vf, tokens, hd, vg, c0, w);
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0 && atomicAdd(arrivals + head, 1) == APPEND_SPLIT - 1)
    {
        // The head's last block: every block has read the tables and written its part.
        arrivals[head] = 0;
        uint4* d = desc + (long)head * max_blocks;
        if (at + 1 < tokens) d[nb - 1].z = desc_meta(at + 1, KV_F32, KV_F32);
        else if (nb >= max_blocks) atomicExch(error, 2);
        else
        {
            install_encoded(d, head_blocks, claims + head, head, nb, resid, units_of(kbytes), tokens, kf, vf);
        }
        head_tokens[head] += 1;
    }
}

// The decode QKV product of one row (batch 1) with RoPE and the append into the paged cache in its epilogue (gemv.cuh MODE 3):
// what paged_rope_append does, without its launch. Warp p owns rotation pair p of the QKV output; lane 0 rotates a query
// pair into q_out, or writes a key (rotated) or value pair as float32 into row desc_count(residual) of its KV head's
// residual. The residual's descriptor and the head's length change only once every block of the head (hd / 8 blocks of
// 8 warps: hd / 16 of keys, as many of values) has written its rows: each block counts itself in arrivals[kv head] after
// a fence, and the last one (which also resets the counter for the next launch) advances the count, or, when the row
// filled the residual, encodes it with all its threads (residual_full: fresh pool slots, the descriptor, an empty
// residual) exactly as paged_rope_append does. No block reads the tables after it has counted itself, so the last block
// is alone with them. Every write is done when the grid ends, so the attention after it (griddepcontrol.wait) sees them.
// Every thread reads its head's block count and residual descriptor once, with ld.global.cg, right after pdl_wait
// (early): the product then hides those two dependent round trips, which pair and the last block's finish each took
// after it (every batch-1 paged step 0.08-0.18% faster on an H100, stop 28). residual_full, reached by the last block
// after the barrier and its fence, reads the rows plainly. No thread reads the descriptor after thread 0 stores its new
// count (docs/benchmarks.md, issue 7, "Races in the fused append").
struct PagedQkvAppend
{
    float* q_out;
    const float* inv_freq;
    const int* pos;
    int heads, kv_heads, hd, interleaved;
    AppendTarget a;
    unsigned* arrivals;

    // A K/V head's block count and residual descriptor, read once the previous kernel is done (gemv calls this after
    // pdl_wait, before its product): no kernel changes them until this grid ends but this head's last block (finish),
    // which writes them after reading, so these values hold for the whole launch, and the product hides their two
    // dependent round trips to L2, which pair and the last block's finish each waited for after it.
    // The rotation's position and frequency (query and key heads) are read here too: pair waited for them after the
    // product (one more round trip, to L1 or L2).
    struct Early
    {
        uint4 r;
        int nb, pos;
        float freq;
    };

    // The product's staged activations borrow the residual's staging (used only after the product, past finish's barrier).
    __device__ static __forceinline__ float4* stage() { return residual_stage(); }

    __device__ __forceinline__ Early early(int head, int i) const
    {
        Early e{};
        if (head < heads + kv_heads)
        {
            e.pos = *pos;
            e.freq = inv_freq[i];
        }
        if (head < heads) return e;
        const int kh = (head - heads) % kv_heads;
        // From L2: an L1 line of the tables (every layer's block counts share one) may predate the last fill.
        e.nb = __ldcg(a.head_blocks + kh);
        e.r = __ldcg(a.desc + (long)kh * a.max_blocks + e.nb - 1);
        return e;
    }

    __device__ __forceinline__ void pair(int head, int i, float x0, float x1, const Early& e) const
    {
        int i0, i1;
        rope_channels(i, hd, interleaved, i0, i1);
        const bool value = head >= heads + kv_heads;
        float y0 = x0, y1 = x1;
        if (!value) rope_rotate(e.pos, e.freq, x0, x1, y0, y1);
        float* dst;
        if (head < heads) dst = q_out + (long)head * hd;
        else dst = reinterpret_cast<float*>(a.pool + (size_t)(value ? e.r.y : e.r.x) * 16) + (long)desc_count(e.r) * hd;
        dst[i0] = y0;
        dst[i1] = y1;
    }

    __device__ __forceinline__ void finish(int head, const Early& e) const
    {
        if (head < heads) return; // uniform over the block: a block's 8 warps own pairs of one head
        const int kh = (head - heads) % kv_heads;
        __shared__ int last;
        __threadfence(); // each writing thread's own fence: thread 0's alone orders the others' rows only by cumulativity
        __syncthreads(); // every warp's rows are written
        if (threadIdx.x == 0)
        {
            __threadfence();
            const unsigned blocks = (unsigned)hd / 8; // (hd / 2 pairs of keys + hd / 2 of values) / 8 warps
            last = atomicAdd(arrivals + kh, 1u) == blocks - 1;
            if (last) arrivals[kh] = 0;
        }
        __syncthreads();
        if (!last) return;
        __threadfence(); // the other blocks' rows before this block reads the residual
        // Every thread holds the residual's descriptor from early (read before the product), so none can see thread 0's
        // new count (residual_advance). When each thread loaded it here instead, a barrier had to keep those loads before
        // that store: a warp that loaded it after took the next count, and at the step before a fill entered
        // residual_full without thread 0 (which had returned), so reserve_pair's shared slot was never written and the
        // warp encoded the residual at whatever pool offset the slot's shared memory held: issue 7's fault.
        residual_advance(a, kh, e.nb, e.r);
    }
};

// Grid: (heads + 2 kv_heads) · hd / 16 blocks of 256 threads (hd a multiple of 16). Tables pre-offset to the layer.
// Its register count matters beyond its own time: capped at 64 (launch bounds (256, 4): 4 blocks an SM instead of 2 at
// NVRTC 12.4's 88), the KIVI caches at 128K, batch 1, decode 7-8% slower a step on an H100 though the kernels alone take
// the same time (docs/benchmarks.md, issue 7, "The fused append's cost"): re-measure those rows after changing it. Held
// to 85 (3 blocks an SM) since the norm is staged in shared memory (gemv.cuh), which NVRTC 12.4 otherwise gave 92.
#define PAGED_QKV(NAME, W) \
    extern "C" __global__ void __launch_bounds__(256, 3) paged_qkv_rope_append_##NAME(const W::T* w, const float* x, const float* nw, float eps, \
        int rows, int cols, float* q_out, const float* inv_freq, const int* pos, int heads, int kv_heads, int hd, int interleaved, u8* pool, \
        uint4* desc, int* head_blocks, int* head_tokens, unsigned* top, int* error, unsigned capacity, int max_blocks, int tokens, int vg, int kf, \
        int vf, unsigned* arrivals) \
    { \
        gemv<W, 1, 3, true, PagedQkvAppend>(w, x, nullptr, nw, eps, rows, cols, 1, PagedQkvAppend{ q_out, inv_freq, pos, heads, kv_heads, hd, \
            interleaved, AppendTarget{ pool, desc, head_blocks, head_tokens, top, error, max_blocks, tokens, hd, vg, kf, vf, capacity }, arrivals }); \
    }
PAGED_QKV(f32, WeightF32)
PAGED_QKV(bf16, WeightBF16)
PAGED_QKV(f16, WeightF16)

// The batch decode step's QKV product (2..8 sequences, gemv_mma MODE 5, attention norm fused) with RoPE and the append in
// its epilogue: what paged_rope_append_split does after the plain product, without its launch (CudaPagedKernels
// .BatchQkvRopeAppend; on an H100 at 8 × 32K that launch and its gap took ~8.5 µs a layer, stop 32). A tile's rows g and
// g + 8 are one head's rotation partners i0, i1 of channel pair i = 8 · (tile mod hd / 16) + g, so warp 0's lane (g, tq),
// which holds both rows for sequences 2tq and 2tq + 1, rotates them in place (the same float32 values and rotation as the
// split append: the same bits) and writes a query pair to q_out, or a key (rotated) or value pair as float32 into row
// desc_count(residual) of that sequence's residual of the KV head. The tables of each K/V lane's two sequences (block count,
// residual descriptor) and the positions are read before pdl_wait (Early): this layer's tables were last written a step
// ago, the positions at the step's end, and the kernel before this one (the embedding or the previous layer's down
// product) writes neither. Each K/V tile's warp counts itself in arrivals[kv head]; the last of a head's
// hd / 8 tiles advances each sequence's residual count and token count. A residual this row fills stays a float32 block
// of `tokens` rows, which this step's attention reads like any other, and is encoded after it by the encode blocks of the
// attention-output product's launch (paged_project_encode_*), which open the next residual; until then no append reads
// it. A full residual whose encode found the pool full (error 1) takes no row.
// HD: the head dimension, a constant so that the tile-to-row mapping costs the product's loop no registers (with hd a kernel
// argument, NVRTC 12.4 spilled in it: 2 loads and a store a group of four steps).
template <int HD>
struct PagedBatchQkv
{
    static constexpr int hd = HD;
    float* q_out;
    const float* inv_freq;
    const int* pos;
    u8* pool;
    uint4* desc;
    int* head_blocks;
    int* head_tokens;
    int* error;
    unsigned* arrivals;
    int heads, kv_heads, interleaved, max_blocks, tokens;

    // What warp 0's lane needs of earlier kernels for its two sequences: for a K/V tile the residual's slot (keys' or values'),
    // row count and the head's block count; for a Q/K tile the rotation's cosine and sine at each sequence's position (taken
    // before the wait by 64 threads: cosf and sinf of angles up to a context's length take the slow path, four a lane,
    // which in the epilogue held each tile's end ~2.7 µs on an H100).
    struct Early
    {
        unsigned slot[2];
        int at[2], nb[2];
        float c[2], s[2];
    };

    // One record a lane of warp 0, in shared memory (one array a kernel: a function's static shared variable).
    static __device__ __forceinline__ Early* early_slots()
    {
        __shared__ Early slots[32];
        return slots;
    }

    __device__ __forceinline__ void channels(int tile, int g, int& h, int& i0, int& i1) const
    {
        const int per = hd / 16;
        h = tile / per;
        rope_channels(8 * (tile % per) + g, hd, interleaved, i0, i1);
    }

    __device__ __forceinline__ void rows(int tile, int g, int& ra, int& rb) const
    {
        int h, i0, i1;
        channels(tile, g, h, i0, i1);
        ra = h * hd + i0;
        rb = h * hd + i1;
    }

    // Threads tid = 0, step, ... < 128 of the block fill warp 0's records: 0-63 the rotations (record tid / 2, its sequence
    // tid % 2), 64-127 the tables; the whole block before the wait (step 256), warp 0 alone for a block's later tiles.
    __device__ __forceinline__ void early(int tile, int tid, int step, int nt) const
    {
        const int h = tile / (hd / 16);
        Early* records = early_slots();
        for (int j = tid; j < 128; j += step)
        {
            const int lane = (j & 63) >> 1, k = j & 1, t = 2 * (lane & 3) + k;
            if (t >= nt) continue;
            Early& e = records[lane];
            if (j < 64)
            {
                if (h >= heads + kv_heads) continue;
                const float angle = rope_angle(__ldcg(pos + t), inv_freq[8 * (tile % (hd / 16)) + (lane >> 2)]);
                e.c[k] = cosf(angle);
                e.s[k] = sinf(angle);
                continue;
            }
            if (h < heads) continue;
            // From L2: an L1 line of the tables may predate their last change.
            const int head = t * kv_heads + (h - heads) % kv_heads;
            const int nb = __ldcg(head_blocks + head);
            const uint4 r = __ldcg(desc + (long)head * max_blocks + nb - 1);
            e.nb[k] = nb;
            e.slot[k] = h >= heads + kv_heads ? r.y : r.x;
            e.at[k] = desc_count(r);
        }
    }

    __device__ __forceinline__ void store(int tile, int lane, const float (&v)[4], int nt) const
    {
        const int g = lane >> 2, tq = lane & 3;
        const Early e = early_slots()[lane]; // written before the tile's reduction barrier (or warp 0's __syncwarp)
        int h, i0, i1;
        channels(tile, g, h, i0, i1);
        const bool value = h >= heads + kv_heads;
#pragma unroll
        for (int k = 0; k < 2; k++)
        {
            const int t = 2 * tq + k;
            if (t >= nt) continue;
            float y0 = v[k], y1 = v[2 + k];
            if (!value) rope_apply(e.c[k], e.s[k], v[k], v[2 + k], y0, y1);
            float* dst;
            if (h < heads) dst = q_out + ((long)t * heads + h) * hd;
            else if (e.at[k] >= tokens) continue; // a full residual whose encode found the pool full (error 1)
            else dst = reinterpret_cast<float*>(pool + (size_t)e.slot[k] * 16) + (long)e.at[k] * hd;
            dst[i0] = y0;
            dst[i1] = y1;
        }
        if (h < heads) return;
        const int kh = (h - heads) % kv_heads;
        // No fence: nothing in this grid reads the rows (the attention after it sees every write of the grid), and every tile's
        // reads of the tables returned before its warp arrives, so the last tile's writes below cannot precede them.
        __syncwarp();
        int last = 0;
        if (lane == 0)
        {
            last = atomicAdd(arrivals + kh, 1u) == (unsigned)(hd / 8) - 1; // hd / 16 key tiles and as many value tiles
            if (last) arrivals[kh] = 0;
        }
        if (!__shfl_sync(0xffffffffu, last, 0) || g != 0) return;
#pragma unroll
        for (int k = 0; k < 2; k++)
        {
            const int t = 2 * tq + k;
            if (t >= nt || e.at[k] >= tokens) continue;
            const int head = t * kv_heads + kh;
            if (e.at[k] + 1 == tokens && e.nb[k] >= max_blocks)
            {
                atomicExch(error, 2); // no block for the encode: the row stays uncounted (paged_rope_append_split counts the token)
                continue;
            }
            desc[(long)head * max_blocks + e.nb[k] - 1].z = desc_meta(e.at[k] + 1, KV_F32, KV_F32);
            head_tokens[head] += 1;
        }
    }
};

// Grid: (heads + 2 kv_heads) · HD / 16 row tiles (HD 64 or 128) strided over at most a wave, as gemv_mma's; tables
// pre-offset to the layer's sequence 0 (sequence t's heads at t · kv_heads), arrivals: kv_heads zeroed counters.
#define PAGED_BATCH_QKV(NAME, BF, HD) \
    extern "C" __global__ void __launch_bounds__(256, 3) NAME(const u16* w, const float* x, const float* nw, float eps, int rows, int cols, \
        int nt, float* q_out, const float* inv_freq, const int* pos, int heads, int kv_heads, int interleaved, u8* pool, uint4* desc, \
        int* head_blocks, int* head_tokens, int* error, int max_blocks, int tokens, unsigned* arrivals) \
    { \
        gemv_mma<BF, 5, true>(w, x, nullptr, nw, eps, rows, cols, nt, nullptr, 0, PagedBatchQkv<HD>{ q_out, inv_freq, pos, pool, desc, \
            head_blocks, head_tokens, error, arrivals, heads, kv_heads, interleaved, max_blocks, tokens }); \
    }
PAGED_BATCH_QKV(paged_qkv_rope_append_batch_bf16_128, true, 128)
PAGED_BATCH_QKV(paged_qkv_rope_append_batch_f16_128, false, 128)
PAGED_BATCH_QKV(paged_qkv_rope_append_batch_bf16_64, true, 64)
PAGED_BATCH_QKV(paged_qkv_rope_append_batch_f16_64, false, 64)

// The encode blocks of a batch step's attention-output launch (paged_project_encode_*): after pdl_wait (this step's
// attention has read every residual), each full residual of the layer's nt · kv_heads heads (filled by PagedBatchQkv) is
// encoded in the cache's formats and an empty residual opened after it. PARTS: APPEND_SPLIT tasks a head sharing one slot
// claim and an arrival counter as paged_rope_append_split's blocks do: for INT8/4/2 pairs (CudaPagedKernels.SplitsAppend)
// each encodes a quarter of the channels, staged alone (8 KB for 32 tokens of 128 channels) in the product's reduction
// buffers (mma_shared), so that the parts launch asks no more shared memory than the plain product, whose carve-out leaves
// its tiles the L1 they read their activations through (the whole-head launch keeps residual_full's 32 KB stage); for
// float pairs (F32/BF16/F16/FP8, per element) each converts a quarter of the elements straight from the residual. Else one task a head, residual_full. The `encoders` blocks take
// tasks encoders apart; a task whose head is not full is skipped, and a block with no full head among its tasks leaves
// before pdl_wait (KIVI's heads fill together once in `tokens` steps, KVzip's a few a step: H100, 8 x 32K, KVzip 0.3 +
// INT4 0.37% faster a step). The same bytes as the append's own launch (CudaPagedKernels.RopeAppend).
#define PART_STAGE (RESIDUAL_STAGE / APPEND_SPLIT)
template <bool PARTS>
__device__ __forceinline__ void encode_fills(const AppendTarget& a, int* arrivals, unsigned long long* claims, int nt, int kv_heads, int encoder,
    int encoders)
{
    const int per = PARTS ? APPEND_SPLIT : 1, tasks = nt * kv_heads * per;
    const int w = a.hd / APPEND_SPLIT, quarter = a.tokens * a.hd / APPEND_SPLIT;
    const int kbytes = block_bytes(a.kf, true, a.tokens, a.hd, a.vg), vbytes = block_bytes(a.vf, false, a.tokens, a.hd, a.vg);
    const bool floats = !kv_quantized(a.kf) && !kv_quantized(a.vf);
    // The block's next task whose head is full, from `task` on (tasks: none). The tables were written by the QKV product two
    // launches back, complete before this launch began (the attention's blocks trigger it after their own wait), and nothing
    // before this launch's installs changes them: read before pdl_wait for the first task, so that a block with nothing to
    // encode (KIVI's steps but one in `tokens`) leaves at once instead of waiting for the attention. From L2 all the same.
    int nb = 0;
    uint4 r = make_uint4(0u, 0u, 0u, 0u);
    auto next_full = [&](int task) {
        for (; task < tasks; task += encoders)
        {
            nb = __ldcg(a.head_blocks + task / per);
            if (nb <= 0) continue; // no residual yet: nothing to encode (and no descriptor before the table to read)
            r = __ldcg(a.desc + (long)(task / per) * a.max_blocks + nb - 1);
            if (desc_count(r) >= a.tokens) break; // uniform over the block
        }
        return task;
    };
    int task = next_full(encoder);
    if (task >= tasks) return;
    pdl_wait();
    pdl_trigger();
    for (; task < tasks; task = next_full(task + encoders))
    {
        const int head = task / per, part = task % per, c0 = part * w;
        uint4* d = a.desc + (long)head * a.max_blocks;
        if constexpr (!PARTS)
        {
            residual_full(a, head, r, true);
            continue;
        }
        else
        {
            if (nb >= a.max_blocks)
            {
                if (threadIdx.x == 0) atomicExch(a.error, 2);
                continue;
            }
            __shared__ unsigned long long slot_s;
            // The product's reduction buffers (mma_shared): this block never runs the product. A quarter's rows (tokens · w
            // floats) fit PART_STAGE by the host's choice of this path (CudaPagedKernels.SplitsAppend: tokens · hd <= 4096).
            static_assert(sizeof(MmaShared) >= 2 * PART_STAGE * sizeof(float), "a quarter's stage fits the product's buffers");
            float* staged = reinterpret_cast<float*>(&mma_shared());
            const int claimer = blockDim.x - 1;
            const float* kres = reinterpret_cast<const float*>(a.pool + (size_t)r.x * 16);
            const float* vres = reinterpret_cast<const float*>(a.pool + (size_t)r.y * 16);
            if (threadIdx.x == claimer) slot_s = split_claim(claims + head, a.top, units_of(kbytes) + units_of(vbytes), a.capacity, a.error);
            else if (!floats)
                for (int i = threadIdx.x; i < a.tokens * w; i += blockDim.x - 1)
                {
                    const int row = i / w, c = c0 + i % w;
                    staged[i] = __ldcg(kres + (long)row * a.hd + c);
                    staged[PART_STAGE + i] = __ldcg(vres + (long)row * a.hd + c);
                }
            __syncthreads();
            if (slot_s != 2ull)
            {
                u8* kdst = a.pool + (size_t)(slot_s - 3ull) * 16;
                u8* vdst = kdst + (size_t)units_of(kbytes) * 16;
                if (!floats)
                    split_encode_part<false>(staged - c0, staged + PART_STAGE - c0, slot_s, a.pool, a.kf, a.vf, a.tokens, a.hd, a.vg, c0, w, w);
                else
                    for (int e = part * quarter + (int)threadIdx.x; e < (part + 1) * quarter; e += blockDim.x)
                    {
                        store_element(kdst, a.kf, e, __ldcg(kres + e));
                        store_element(vdst, a.vf, e, __ldcg(vres + e));
                    }
            }
            __threadfence();
            __syncthreads();
            if (threadIdx.x == 0 && atomicAdd(arrivals + head, 1) == APPEND_SPLIT - 1)
            {
                arrivals[head] = 0; // the head's last part: every part has read the tables and written its codes
                install_encoded(d, a.head_blocks, claims + head, head, nb, r, units_of(kbytes), a.tokens, a.kf, a.vf);
            }
            __syncthreads(); // slot_s and staged are rewritten by the next task
        }
    }
}

// The attention-output product of a batch step (gemv_mma MODE 1, accumulating into the residual stream) with `encoders`
// encode blocks after its tiles (encode_fills): the host sizes them to the wave's free slots, so both share one wave and
// the encodes cost no launch; the tiles' blocks come first, so they are placed as the product's own launch places them.
// Tables pre-offset to the layer's sequence 0; arrivals and claims: a zeroed word a head.
#define PAGED_PROJECT_ENCODE(NAME, BF, PARTS) \
    extern "C" __global__ void __launch_bounds__(256, 3) NAME(const u16* w, const float* x, float* y, int rows, int cols, int nt, \
        int encoders, u8* pool, uint4* desc, int* head_blocks, int* head_tokens, unsigned* top, int* error, unsigned capacity, int kv_heads, \
        int hd, int max_blocks, int tokens, int vg, int kf, int vf, int* arrivals, unsigned long long* claims) \
    { \
        const int first = (int)gridDim.x - encoders; \
        if ((int)blockIdx.x >= first) \
        { \
            encode_fills<PARTS>(AppendTarget{ pool, desc, head_blocks, head_tokens, top, error, max_blocks, tokens, hd, vg, kf, vf, capacity }, \
                arrivals, claims, nt, kv_heads, (int)blockIdx.x - first, encoders); \
            return; \
        } \
        gemv_mma<BF, 1, false, false, int, true>(w, x, y, nullptr, 0.0f, rows, cols, nt, nullptr, encoders); \
    }
PAGED_PROJECT_ENCODE(paged_project_encode_parts_bf16, true, true)
PAGED_PROJECT_ENCODE(paged_project_encode_parts_f16, false, true)
PAGED_PROJECT_ENCODE(paged_project_encode_whole_bf16, true, false)
PAGED_PROJECT_ENCODE(paged_project_encode_whole_f16, false, false)

// Eviction of one head per block: flags[head·max_tokens + i] != 0 drops the head's stored token i. Blocks without
// a dropped token are copied as they are (but for float blocks reached while their pair has a partial block pending,
// whose rows join it); the kept tokens of each run of affected blocks are decoded and re-encoded in their own formats,
// Tokens at a time, a run of one format pair ending in a partial block (HeadStore.Evict keeps the same tokens but
// regroups all the affected blocks', one partial block per format pair: the storage order stays here, so a quantized
// block kept whole still ends the run before it);
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
    bool failed = false; // the same in every thread: reserve_pair gives them all the same slot
    int written = 0, start = 0, pending = 0, pkf = -1, pvf = -1;

    // Encodes the pending rows as one block pair of (pkf, pvf) and appends its descriptor.
    auto flush = [&]() {
        if (pending == 0) return;
        if (!encode_pair(sk, sv, pending, pkf, pvf, tokens, hd, vg, new_pool, top, capacity, error, d + written, start)) failed = true;
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
        // A block without a dropped token is copied, unless a partial block of its own float formats is pending: its rows
        // then join the pending ones (re-encoding a decoded float is exact), so a run of blocks of one float pair ends in
        // one partial block as HeadStore.Evict's regrouping does, not one per block kept whole. A quantized block is
        // copied (re-quantizing it would add the error the CPU's untouched block does not have).
        if (!__syncthreads_or(any) && (pending == 0 || kf != pkf || vf != pvf || kf > KV_FP8 || vf > KV_FP8))
        {
            flush();
            if (!copy_pair(old_pool, new_pool, e, tokens, hd, vg, top, capacity, error, d + written, start)) failed = true;
            written++;
            start += cnt;
            continue;
        }
        for (int t = 0; t < cnt; t++)
        {
            if (drop[e.w + t]) continue;
            if (kf != pkf || vf != pvf) { flush(); pkf = kf; pvf = vf; }
            stage_row(old_pool, e, t, sk, sv, pending, tokens, hd, vg);
            pending++;
            if (pending == tokens) flush();
        }
    }
    flush();
    // The residual: its kept rows move up within its slot, copied into the new pool at the same offsets.
    const uint4 r = d[nb - 1];
    __syncthreads();
    const int kept = compact_residual(old_pool, new_pool, r, drop, hd);
    if (threadIdx.x == 0)
    {
        d[written] = make_uint4(r.x, r.y, desc_meta(kept, KV_F32, KV_F32), (unsigned)start);
        head_blocks[head] = written + 1;
        head_tokens[head] = start + kept;
    }
}

// ---------------------------------------------------------------------------------------------------
// Compression scoring and re-quantization on the device (issue 7): what the presses need without reading the
// cache back.
//
// Attention statistics (the CPU's PagedAttentionStatistics): for the query rows of one layer's attention call
// (q [rows, heads, hd], rotated, as attention saw them), every (KV head, covered stored token) gets the softmax
// probability each counted row gives it, folded over the group's heads (max, or mean) and then over the counted rows
// as a running max and a running sum. Covered tokens are the head's first `covered[head]` stored tokens (those
// stored when collection began). Row t sees all but the head's last rows-1-t stored tokens (the rows were just
// appended; the causal rule of paged attention).
//
// A probability is e^(s - lse) with the row's log-sum-exp over every token it sees, so it needs the whole row first.
// The attention launch just computed exactly that: each of its splits left the split's (max, sum of e^(s - max)) of
// every (row, query head) in part_ml (natural-log maxima in every paged kernel). One launch after it,
// paged_stats_accumulate, takes each row's log-sum-exp from there (part_ml_lse) and rescores the covered tokens:
// grid (covered-token tiles of STATS_TK, KV heads), each block decodes its tile's keys into shared memory once and
// runs every counted row of the group through it, STATS_TQ query heads at a time, as a 64 x 64 fp32 score tile
// (4 x 4 per thread), so a long prefill's rows cost a dense product rather than a scalar pass per row.

// The log-sum-exp of query head h of row t over all its splits, from the (max, sum) pairs the attention launch left
// in part_ml [rows, heads, splits, 2] (merge_splits' layout; natural-log maxima): the one place that reads part_ml
// outside attention. A split with sum 0 saw nothing, nor does any after it (a row sees a prefix of the head's storage),
// so the sums stop there: the pipelined kernel marks only the slot after a head's last split, and slots past it may
// hold an earlier launch's values. -inf when no split saw a token.
__device__ __forceinline__ float part_ml_lse(const float* part_ml, int t, int h, int heads, int splits)
{
    const float2* p = reinterpret_cast<const float2*>(part_ml) + ((long)t * heads + h) * splits;
    int n = 0;
    while (n < splits && p[n].y > 0.0f) n++;
    float m = neg_inf();
    for (int s = 0; s < n; s++) m = fmaxf(m, p[s].x);
    float l = 0.0f;
    for (int s = 0; s < n; s++) l += p[s].y * expf(p[s].x - m);
    return l > 0.0f ? m + logf(l) : neg_inf();
}

// Stages one head's stored tokens [i0, i0 + cnt) (cnt <= TK; descriptors d, nb blocks) as a channel-major tile
// tile[hd][TK] of keys (KEYS) or values, zeros past cnt: each tile token's block found by a binary search over the
// descriptors' ascending first-token indices into tile_block[TK], then every element decoded (BlockCodec.Decode's
// arithmetic). Called by every thread of the block; no barrier after the tile's stores.
template <int TK, bool KEYS>
__device__ __forceinline__ void stage_tile(const u8* pool, const uint4* d, int nb, int i0, int cnt, int tokens, int hd, int vg,
    int* tile_block, float* tile)
{
    if (threadIdx.x < cnt)
    {
        const int i = i0 + threadIdx.x;
        int lo = 0, hi = nb - 1;
        while (lo < hi)
        {
            const int mid = (lo + hi + 1) / 2;
            if ((int)d[mid].w <= i) lo = mid; else hi = mid - 1;
        }
        tile_block[threadIdx.x] = lo;
    }
    __syncthreads();
    for (int x = threadIdx.x; x < hd * TK; x += blockDim.x)
    {
        const int j = x % TK, c = x / TK;
        float v = 0.0f;
        if (j < cnt)
        {
            const uint4 e = d[tile_block[j]];
            v = KEYS ? decode_element(pool + (size_t)e.x * 16, desc_kfmt(e), true, i0 + j - (int)e.w, c, tokens, hd, vg)
                     : decode_element(pool + (size_t)e.y * 16, desc_vfmt(e), false, i0 + j - (int)e.w, c, tokens, hd, vg);
        }
        tile[x] = v;
    }
}

constexpr int STATS_TK = 64, STATS_TQ = 64, STATS_THREADS = 256, STATS_MAX_HD = 256;

// Shared memory of one statistics block (CudaPagedKernels.StatsSharedBytes): the keys [hd][STATS_TK], the query tile's
// log-sum-exps, each token's (max, sum) from the 4 row partitions, then the queries [hd][STATS_TQ] (channel-major, so a
// thread's 4 keys and 4 queries are one 16-byte load each), whose space the probabilities [STATS_TQ][STATS_TK + 1] reuse.

// fold: 0 = max over the group's heads, 1 = mean. Rows before first_counted only entered the attention's log-sum-exp.
// stats_max / stats_sum: [kv_heads, max_tokens] of this layer (running, accumulated over calls). part_ml: the attention
// launch's (max, sum) per [rows, heads, splits].
// KVzip+ (value_norms not null): each probability p(row, h, t) is weighted by value_norms[h, t] / row_norms[row] before
// the fold (‖W_o^h v_t‖ of the layer's query head h, [heads, vn_stride], and ‖x‖ of the row's layer input), as
// KvzipPlusRun weighs it on the CPU.
extern "C" __global__ void __launch_bounds__(STATS_THREADS) paged_stats_accumulate(const float* q, const u8* pool, const uint4* desc,
    const int* head_blocks, const int* head_tokens, const int* covered, const float* part_ml, float* stats_max, float* stats_sum, int rows,
    int first_counted, int fold, int heads, int kv_heads, int hd, int tokens, int vg, int max_blocks, int max_tokens, int splits, float scale,
    const float* value_norms, int vn_stride, const float* row_norms)
{
    extern __shared__ float4 stats_smem4[];
    float* kt = reinterpret_cast<float*>(stats_smem4); // [hd][STATS_TK]
    float* lse = kt + hd * STATS_TK;                  // [STATS_TQ]
    float* red = lse + STATS_TQ;                      // [4][STATS_TK] max, then [4][STATS_TK] sum
    float* qt = red + 2 * 4 * STATS_TK;               // [hd][STATS_TQ]; then the probabilities [STATS_TQ][STATS_TK + 1]
    __shared__ int tile_block[STATS_TK];
    const int kvh = blockIdx.y, group = heads / kv_heads, n = head_tokens[kvh], cov = min(covered[kvh], n);
    const int i0 = blockIdx.x * STATS_TK;
    if (i0 >= cov || first_counted >= rows) return; // uniform over the block
    const int cnt = min(STATS_TK, cov - i0);
    stage_tile<STATS_TK, true>(pool, desc + (long)kvh * max_blocks, head_blocks[kvh], i0, cnt, tokens, hd, vg, tile_block, kt);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int rows_per_tile = STATS_TQ / group, qn = rows_per_tile * group;
    // Fold layout: thread owns token fj of the tile and every 4th row of the query tile from fp.
    const int fj = threadIdx.x % STATS_TK, fp = threadIdx.x / STATS_TK;
    float run_max = 0.0f, run_sum = 0.0f;
    float* prob = qt; // [STATS_TQ][STATS_TK + 1], after the scores are taken
    for (int r0 = first_counted; r0 < rows; r0 += rows_per_tile)
    {
        const int tile_rows = min(rows_per_tile, rows - r0);
        __syncthreads(); // the previous tile's probabilities are folded (and, first, the keys are decoded)
        // Queries of rows r0.. of this group, pre-scaled, channel-major: float4 reads along the channels.
        for (int x = threadIdx.x; x < STATS_TQ * (hd / 4); x += blockDim.x)
        {
            const int qi = x % STATS_TQ, c4 = x / STATS_TQ;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (qi < tile_rows * group)
            {
                const int r = r0 + qi / group, h = kvh * group + qi % group;
                v = reinterpret_cast<const float4*>(q + ((long)r * heads + h) * hd)[c4];
            }
            qt[(c4 * 4 + 0) * STATS_TQ + qi] = v.x * scale;
            qt[(c4 * 4 + 1) * STATS_TQ + qi] = v.y * scale;
            qt[(c4 * 4 + 2) * STATS_TQ + qi] = v.z * scale;
            qt[(c4 * 4 + 3) * STATS_TQ + qi] = v.w * scale;
        }
        if (threadIdx.x < STATS_TQ)
        {
            const int qi = threadIdx.x;
            lse[qi] = qi < tile_rows * group ? part_ml_lse(part_ml, r0 + qi / group, kvh * group + qi % group, heads, splits) : neg_inf();
        }
        __syncthreads();
        float acc[4][4];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int b = 0; b < 4; b++) acc[a][b] = 0.0f;
        for (int c = 0; c < hd; c++)
        {
            const float4 qv = reinterpret_cast<const float4*>(qt + c * STATS_TQ)[ty];
            const float4 kv = reinterpret_cast<const float4*>(kt + c * STATS_TK)[tx];
            const float qa[4] = { qv.x, qv.y, qv.z, qv.w }, ka[4] = { kv.x, kv.y, kv.z, kv.w };
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) acc[a][b] = fmaf(qa[a], ka[b], acc[a][b]);
        }
        __syncthreads(); // every score is taken: the probabilities overwrite the queries
#pragma unroll
        for (int a = 0; a < 4; a++)
        {
            const int qi = ty * 4 + a;
            const int visible = row_visible(n, rows, r0 + qi / group, 0); // storage indices this row sees
#pragma unroll
            for (int b = 0; b < 4; b++)
            {
                const int j = tx * 4 + b;
                float p = qi < qn && i0 + j < visible && lse[qi] != neg_inf() ? expf(acc[a][b] - lse[qi]) : 0.0f;
                if (value_norms != nullptr && p > 0.0f)
                    p = j < cnt ? p * value_norms[(long)(kvh * group + qi % group) * vn_stride + i0 + j] / row_norms[r0 + qi / group] : 0.0f;
                prob[qi * (STATS_TK + 1) + j] = p;
            }
        }
        __syncthreads();
        for (int r = fp; r < tile_rows; r += 4)
        {
            const float* pr = prob + r * group * (STATS_TK + 1) + fj;
            float f = pr[0];
            for (int g = 1; g < group; g++) f = fold == 0 ? fmaxf(f, pr[g * (STATS_TK + 1)]) : f + pr[g * (STATS_TK + 1)];
            if (fold == 1 && group > 1) f *= 1.0f / group;
            run_max = fmaxf(run_max, f);
            run_sum += f;
        }
    }
    red[fp * STATS_TK + fj] = run_max;
    red[4 * STATS_TK + fp * STATS_TK + fj] = run_sum;
    __syncthreads();
    if (threadIdx.x < cnt)
    {
        const int j = threadIdx.x;
        float* smax = stats_max + (long)kvh * max_tokens + i0 + j;
        float* ssum = stats_sum + (long)kvh * max_tokens + i0 + j;
        float mx = *smax, sm = *ssum;
        for (int p = 0; p < 4; p++) { mx = fmaxf(mx, red[p * STATS_TK + j]); sm += red[4 * STATS_TK + p * STATS_TK + j]; }
        *smax = mx;
        *ssum = sm;
    }
}

// KVzip's scores of one repeat run: per head (one block each), the run's chunk [start, end) of stored tokens takes its
// maxima from the statistics (storage index = position in a fresh prefill).
extern "C" __global__ void press_take_range(const float* stats_max, float* scores, int max_tokens, int start, int end)
{
    const long base = (long)blockIdx.x * max_tokens;
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) scores[base + i] = stats_max[base + i];
}

// KVzip+'s weights (KvzipPlusRun, KvzipPlusValueNorms on the CPU): a repeat run's probability p(q, h, t) counts as
// p · ‖W_o^h v_t‖ / ‖x_q‖. ‖W_o^h v‖² = vᵀ G_h v with the head's Gram matrix G_h = W_o^hᵀ W_o^h [hd, hd], so the value
// norms cost one [tokens, hd] x [hd, hd] product per query head and the Gram matrices one pass over W_o per layer.

// ‖x_r‖ of every row of x [rows, size] (the layer input of the statistics' rows). Grid: rows, 256 threads.
extern "C" __global__ void press_row_norms(const float* x, float* out, int size)
{
    const float* row = x + (long)blockIdx.x * size;
    float s = 0.0f;
    for (int i = threadIdx.x; i < size; i += blockDim.x) s = fmaf(row[i], row[i], s);
    s = block_sum(s);
    if (threadIdx.x == 0) out[blockIdx.x] = sqrtf(s);
}

constexpr int GRAM_T = 32;

// G_h = W_hᵀ W_h of every head h of an output projection w [rows, cols = heads · hd] (row-major, W_h its hd columns of
// head h): grams [heads, hd, hd]. Grid (⌈hd/32⌉, ⌈hd/32⌉, heads), 256 threads: a 32 x 32 tile of G_h, 4 entries per
// thread, summed over w's rows 32 at a time through shared memory (G_h[i][j] and G_h[j][i] add the same products in
// the same order: the result is exactly symmetric, as the CPU's mirrored triangle).
template <class W>
__device__ __forceinline__ void head_grams(const typename W::T* w, float* grams, int rows, int cols, int hd)
{
    __shared__ float a[GRAM_T][GRAM_T + 1], b[GRAM_T][GRAM_T + 1];
    const int h = blockIdx.z, i0 = blockIdx.y * GRAM_T, j0 = blockIdx.x * GRAM_T;
    const int tx = threadIdx.x % GRAM_T, ty = threadIdx.x / GRAM_T;
    float acc[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
    for (int r0 = 0; r0 < rows; r0 += GRAM_T)
    {
        for (int x = threadIdx.x; x < GRAM_T * GRAM_T; x += blockDim.x)
        {
            const int r = x / GRAM_T, c = x % GRAM_T;
            const long row = (long)(r0 + r) * cols + (long)h * hd;
            a[r][c] = r0 + r < rows && i0 + c < hd ? W::get(w, row + i0 + c) : 0.0f;
            b[r][c] = r0 + r < rows && j0 + c < hd ? W::get(w, row + j0 + c) : 0.0f;
        }
        __syncthreads();
        for (int r = 0; r < GRAM_T; r++)
        {
            const float bv = b[r][tx];
#pragma unroll
            for (int k = 0; k < 4; k++) acc[k] = fmaf(a[r][ty + 8 * k], bv, acc[k]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < 4; k++)
    {
        const int i = i0 + ty + 8 * k, j = j0 + tx;
        if (i < hd && j < hd) grams[((long)h * hd + i) * hd + j] = acc[k];
    }
}

#define HEAD_GRAMS(NAME, W) \
    extern "C" __global__ void __launch_bounds__(256) press_head_grams_##NAME(const W::T* w, float* grams, int rows, int cols, int hd) \
    { \
        head_grams<W>(w, grams, rows, cols, hd); \
    }
HEAD_GRAMS(f32, WeightF32)
HEAD_GRAMS(bf16, WeightBF16)
HEAD_GRAMS(f16, WeightF16)

constexpr int VN_TK = 32;

// ‖W_o^h v_t‖ = sqrt(max(0, v_tᵀ G_h v_t)) of one layer's stored tokens [0, count) (storage order) for every query head
// h of each KV head's group: out [kv_heads, group, stride] (row h of the layer), grams [heads, hd, hd]. Grid
// (⌈count/32⌉, kv_heads), 256 threads: the tile's values decoded into shared memory [hd][32] (BlockCodec.Decode's
// arithmetic), then per head each warp takes every 8th row i of G_h: (G_h v)_i · v_i summed over i per token.
extern "C" __global__ void __launch_bounds__(256) press_value_norms(const u8* pool, const uint4* desc, const int* head_blocks,
    const int* head_tokens, const float* grams, float* out, int count, int stride, int heads, int kv_heads, int hd, int tokens, int vg,
    int max_blocks)
{
    extern __shared__ float vn_smem[];
    float* vt = vn_smem;          // [hd][VN_TK]
    float* red = vt + hd * VN_TK; // [8][VN_TK]
    __shared__ int tile_block[VN_TK];
    const int kvh = blockIdx.y, group = heads / kv_heads, i0 = blockIdx.x * VN_TK;
    const int n = min(count, head_tokens[kvh]);
    if (i0 >= n) return; // uniform over the block
    const int cnt = min(VN_TK, n - i0);
    stage_tile<VN_TK, false>(pool, desc + (long)kvh * max_blocks, head_blocks[kvh], i0, cnt, tokens, hd, vg, tile_block, vt);
    __syncthreads();
    const int tj = threadIdx.x % VN_TK, part = threadIdx.x / VN_TK;
    for (int k = 0; k < group; k++)
    {
        const float* g = grams + (long)(kvh * group + k) * hd * hd;
        float acc = 0.0f;
        for (int i = part; i < hd; i += 8)
        {
            const float* gi = g + (long)i * hd;
            float s = 0.0f;
            for (int c = 0; c < hd; c++) s = fmaf(gi[c], vt[c * VN_TK + tj], s);
            acc = fmaf(vt[i * VN_TK + tj], s, acc);
        }
        red[part * VN_TK + tj] = acc;
        __syncthreads();
        if (threadIdx.x < cnt)
        {
            float sum = 0.0f;
            for (int p = 0; p < 8; p++) sum += red[p * VN_TK + threadIdx.x];
            out[((long)kvh * group + k) * stride + i0 + threadIdx.x] = sqrtf(fmaxf(0.0f, sum));
        }
        __syncthreads();
    }
}

// The norms ‖k‖₂ of a staged key tile's tokens ([hd][VN_TK] in shared memory) into norms[VN_TK]: 8 threads a token sum
// the squares of every 8th channel into red [8][VN_TK]. Starts and ends with the tile complete (a barrier each side).
__device__ __forceinline__ void tile_key_norms(const float* tile, int hd, float* red, float* norms)
{
    const int tj = threadIdx.x % VN_TK, part = threadIdx.x / VN_TK;
    float acc = 0.0f;
    for (int c = part; c < hd; c += 8) acc = fmaf(tile[c * VN_TK + tj], tile[c * VN_TK + tj], acc);
    red[part * VN_TK + tj] = acc;
    __syncthreads();
    if (threadIdx.x < VN_TK)
    {
        float sum = 0.0f;
        for (int p = 0; p < 8; p++) sum += red[p * VN_TK + threadIdx.x];
        norms[threadIdx.x] = sqrtf(sum);
    }
    __syncthreads();
}

// ‖k_t‖₂ of every stored token of one layer's heads (storage order), for key-norm scores: out [kv_heads, stride]. Grid
// (⌈max tokens/32⌉, kv_heads), 256 threads: the tile's keys decoded into shared memory [hd][32] as the statistics and
// value norms decode them (decode_element: every block format and the float32 residual), then their norms. Only the
// norms go back to the host, not the keys (a download of the whole cache).
extern "C" __global__ void __launch_bounds__(256) press_key_norms(const u8* pool, const uint4* desc, const int* head_blocks,
    const int* head_tokens, float* out, int stride, int hd, int tokens, int vg, int max_blocks)
{
    extern __shared__ float kn_smem[];
    float* kt = kn_smem;            // [hd][VN_TK]
    float* red = kt + hd * VN_TK;   // [8][VN_TK]
    float* norms = red + 8 * VN_TK; // [VN_TK]
    __shared__ int tile_block[VN_TK];
    const int kvh = blockIdx.y, i0 = blockIdx.x * VN_TK, n = head_tokens[kvh];
    if (i0 >= n) return; // uniform over the block
    const int cnt = min(VN_TK, n - i0);
    stage_tile<VN_TK, true>(pool, desc + (long)kvh * max_blocks, head_blocks[kvh], i0, cnt, tokens, hd, vg, tile_block, kt);
    __syncthreads();
    tile_key_norms(kt, hd, red, norms);
    if (threadIdx.x < cnt) out[(long)kvh * stride + i0 + threadIdx.x] = norms[threadIdx.x];
}

// A head's stored keys i0 .. i0 + cnt - 1 decoded into tile [hd][VN_TK] and divided by their norms (unit keys; a zero key
// stays zero, as RkvScorer.RawRedundancy leaves it); columns past cnt are zero.
__device__ __forceinline__ void stage_unit_keys(const u8* pool, const uint4* d, int nb, int i0, int cnt, int tokens, int hd, int vg,
    int* tile_block, float* tile, float* red, float* norms)
{
    stage_tile<VN_TK, true>(pool, d, nb, i0, cnt, tokens, hd, vg, tile_block, tile);
    __syncthreads();
    tile_key_norms(tile, hd, red, norms);
    for (int x = threadIdx.x; x < hd * VN_TK; x += blockDim.x)
    {
        const float norm = norms[x % VN_TK];
        if (norm > 0.0f) tile[x] = __fdiv_rn(tile[x], norm);
    }
    __syncthreads();
}

// R-KV's raw redundancy of one layer's heads (RkvScorer.RawRedundancy; storage order, which is ascending position after
// the fresh prefill R-KV presses): for token j, Σ c_ij over the later tokens i with c_ij = cos(k_i, k_j) > threshold,
// divided by n − 1; out [kv_heads, stride]. Grid (⌈max tokens/32⌉, kv_heads), 256 threads: the block's 32 keys j as unit
// keys in shared memory, then every 32-key tile i from the block's own on likewise; thread (tj, part) takes the dots of
// key j0 + tj with keys i0 + 4·part .. + 3, one float4 broadcast of the i tile and one j load a channel. O(n²·hd) a head:
// what made R-KV on the host read the whole cache back and take minutes at long contexts.
extern "C" __global__ void __launch_bounds__(256) press_key_redundancy(const u8* pool, const uint4* desc, const int* head_blocks,
    const int* head_tokens, float* out, int stride, int hd, int tokens, int vg, int max_blocks, double threshold)
{
    extern __shared__ float rd_smem[];
    float* kj = rd_smem;            // [hd][VN_TK]
    float* ki = kj + hd * VN_TK;    // [hd][VN_TK]
    float* red = ki + hd * VN_TK;   // [8][VN_TK]
    float* norms = red + 8 * VN_TK; // [VN_TK]
    __shared__ int tile_block[VN_TK];
    const int kvh = blockIdx.y, j0 = blockIdx.x * VN_TK, n = head_tokens[kvh];
    if (j0 >= n) return; // uniform over the block
    const uint4* d = desc + (long)kvh * max_blocks;
    const int nb = head_blocks[kvh], tj = threadIdx.x % VN_TK, part = threadIdx.x / VN_TK;
    stage_unit_keys(pool, d, nb, j0, min(VN_TK, n - j0), tokens, hd, vg, tile_block, kj, red, norms);
    double acc = 0.0;
    for (int i0 = j0; i0 < n; i0 += VN_TK)
    {
        stage_unit_keys(pool, d, nb, i0, min(VN_TK, n - i0), tokens, hd, vg, tile_block, ki, red, norms);
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int ch = 0; ch < hd; ch++)
        {
            const float x = kj[ch * VN_TK + tj];
            const float4 y = *reinterpret_cast<const float4*>(ki + ch * VN_TK + 4 * part);
            c[0] = fmaf(y.x, x, c[0]); c[1] = fmaf(y.y, x, c[1]); c[2] = fmaf(y.z, x, c[2]); c[3] = fmaf(y.w, x, c[3]);
        }
        for (int r = 0; r < 4; r++)
        {
            const int i = i0 + 4 * part + r;
            if (i < n && i > j0 + tj && (double)c[r] > threshold) acc += c[r];
        }
        __syncthreads(); // every thread's dots are done before the next tile overwrites ki
    }
    red[part * VN_TK + tj] = (float)acc;
    __syncthreads();
    if (j0 + (int)threadIdx.x < n && threadIdx.x < VN_TK)
    {
        double sum = 0.0;
        for (int p = 0; p < 8; p++) sum += red[p * VN_TK + threadIdx.x];
        out[(long)kvh * stride + j0 + threadIdx.x] = n > 1 ? (float)(sum / (n - 1)) : 0.0f;
    }
}

// SnapKV's scores from the summed statistics (SnapKvScorer.Pool1D): per head, the covered tokens' sums pooled
// along the stored tokens (odd kernel, zero padding, average divides by the kernel, or maximum), in float64
// as the CPU does; tokens past the covered ones (the observation window) score +inf. One block per head.
extern "C" __global__ void press_pool_scores(const float* stats_sum, const int* covered, const int* head_tokens, float* scores,
    int max_tokens, int kernel, int use_max)
{
    const int head = blockIdx.x, n = head_tokens[head], cov = min(covered[head], n), r = kernel / 2;
    const float* src = stats_sum + (long)head * max_tokens;
    float* dst = scores + (long)head * max_tokens;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
    {
        if (i >= cov) { dst[i] = __int_as_float(0x7f800000); continue; }
        double acc = use_max ? -1e300 : 0.0;
        for (int j = i - r; j <= i + r; j++)
        {
            const double v = j >= 0 && j < cov ? (double)src[j] : 0.0;
            acc = use_max ? fmax(acc, v) : acc + v;
        }
        dst[i] = (float)(use_max ? acc : acc / kernel);
    }
}

// One head's H2O scores (a block): the summed mass src[i] as a float for the first `covered` of its n stored tokens, 0 for
// the rest, +inf from stored index window_start on (the window the press never drops).
template <typename S>
__device__ __forceinline__ void h2o_head_scores(const S* src, float* dst, int n, int covered, int window_start)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = i >= window_start ? __int_as_float(0x7f800000) : i < covered ? (float)src[i] : 0.0f;
}

// H2O's scores from the summed statistics (H2oScorer): per head, the probability mass every counted query gave each
// stored token (summed over the observed chunks), 0 for tokens no chunk covered, +inf for the newest `window` of the
// head's n stored tokens (a fresh prefill: storage index = position). One block per head.
extern "C" __global__ void press_h2o_scores(const float* stats_sum, const int* covered, const int* head_tokens, float* scores, int max_tokens, int window)
{
    const int head = blockIdx.x, n = head_tokens[head];
    h2o_head_scores(stats_sum + (long)head * max_tokens, scores + (long)head * max_tokens, n, min(covered[head], n), n - window);
}

// H2O's decode press on the device (CudaDecodeCache's running sums): after each observed step, every covered stored token's
// summed probability is added to its running sum, in float64 as the CPU session sums (the same float added to the same
// double in the same order: the same bits). sums [heads, max_tokens] doubles, storage order, zero past each head's
// stored tokens (appends land on zeros; press_sums_compact keeps it so). One block per head.
extern "C" __global__ void press_sums_add(double* sums, const float* stats_sum, const int* covered, int max_tokens)
{
    const int head = blockIdx.x, n = covered[head];
    double* dst = sums + (long)head * max_tokens;
    const float* src = stats_sum + (long)head * max_tokens;
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] += (double)src[i];
}

// H2O's decode scores from the running sums, as the CPU session casts them: (float)sum, +inf from window_start[head] on
// (the stored index of the first position in the window: a head stored in ascending position keeps its window last).
extern "C" __global__ void press_decode_h2o_scores(const double* sums, const int* head_tokens, const int* window_start, float* scores, int max_tokens)
{
    const int head = blockIdx.x, n = head_tokens[head];
    h2o_head_scores(sums + (long)head * max_tokens, scores + (long)head * max_tokens, n, n, window_start[head]);
}

// The running sums follow an eviction (launched before paged_evict, while head_tokens still counts the old tokens): each
// head's kept sums move down in storage order (paged_evict keeps the kept tokens' order), the freed tail is zeroed. In
// chunks of the block's 256 threads, in order: a chunk is read whole before any of it is written, and its kept values land
// at or below their own index, so no write reaches a value not yet read. One block per head.
extern "C" __global__ void __launch_bounds__(256) press_sums_compact(double* sums, const u8* drop, const int* head_tokens, int max_tokens)
{
    __shared__ int warp_kept[8];
    const int head = blockIdx.x, n = head_tokens[head], lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double* s = sums + (long)head * max_tokens;
    const u8* d = drop + (long)head * max_tokens;
    int base = 0; // kept tokens of the chunks before
    for (int i0 = 0; i0 < n; i0 += 256)
    {
        const int i = i0 + threadIdx.x;
        const bool keep = i < n && d[i] == 0;
        const double v = keep ? s[i] : 0.0;
        const unsigned ballot = __ballot_sync(0xffffffffu, keep);
        if (lane == 0) warp_kept[warp] = __popc(ballot);
        __syncthreads();
        int at = base + __popc(ballot & ((1u << lane) - 1u)), total = 0;
        for (int w = 0; w < 8; w++)
        {
            if (w < warp) at += warp_kept[w];
            total += warp_kept[w];
        }
        if (keep) s[at] = v;
        base += total;
        __syncthreads(); // warp_kept is the next chunk's
    }
    for (int i = base + threadIdx.x; i < n; i += 256) s[i] = 0.0;
}

// Per head (one block): keeps the keep[head] highest-scoring candidates (stored tokens from protect[head] on),
// every +inf score and every protected token, as TopK.KeepMask orders them (higher score first, ties to the
// later token): candidate i is kept when its key (ordered score bits, index) is at least the keep-th largest key,
// found by a binary search over the 64-bit keys. drop[head·max_tokens + i] = 1 for the others (paged_evict's flags).
__device__ __forceinline__ unsigned long long press_key(float s, int i)
{
    const unsigned u = __float_as_uint(s);
    return ((unsigned long long)((u & 0x80000000u) ? ~u : (u | 0x80000000u)) << 32) | (unsigned)i;
}

extern "C" __global__ void press_select(const float* scores, const int* head_tokens, const int* keep, const int* protect, u8* drop, int max_tokens)
{
    __shared__ int count_shared;
    const int head = blockIdx.x, n = head_tokens[head], p0 = min(protect[head], n), k = keep[head];
    const float* s = scores + (long)head * max_tokens;
    unsigned long long lo = 0ull, hi = ~0ull; // the answer T: the largest x with #(key >= x) >= k
    if (k <= 0) lo = hi; // keep none by rank: only +inf and protected tokens stay
    else
    {
        // Invariant: #(key >= lo) >= k, and T < hi + 1; when fewer than k candidates exist lo = 0 keeps them all.
        while (lo < hi)
        {
            const unsigned long long mid = lo + (hi - lo) / 2 + 1;
            int c = 0;
            for (int i = p0 + threadIdx.x; i < n; i += blockDim.x) c += press_key(s[i], i) >= mid;
            if (threadIdx.x == 0) count_shared = 0;
            __syncthreads();
            atomicAdd(&count_shared, c);
            __syncthreads();
            const int total = count_shared;
            __syncthreads();
            if (total >= k) lo = mid; else hi = mid - 1;
        }
    }
    const bool none = k <= 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
    {
        const bool inf = __float_as_uint(s[i]) == 0x7f800000u;
        const bool kept = i < p0 || inf || (!none && press_key(s[i], i) >= lo);
        drop[(long)head * max_tokens + i] = kept ? 0 : 1;
    }
}

// Re-quantization of one head per block (HeadStore.Requantize on the device): select[head·max_tokens + i] != 0
// re-encodes stored token i in the target formats (tkf, tvf). As the CPU store does it: blocks without a selected
// token, or already in the target formats, stay as they are (cls 0); the other blocks (cls 1) are decoded and their
// tokens regrouped by format pair (the target's, or their own for unselected tokens) into fresh dense blocks, one
// format pair after another in the order the pairs first appear, each pair's tokens in storage order; selected
// residual rows join the target's blocks, the others stay in the residual; a kept partial block whose format pair
// is being written (cls 2) joins that pair's tokens. The new table is the kept blocks in order, then the pairs'
// blocks, then the residual. old_desc is a copy of the tables taken before the launch; cls: [heads, max_blocks]
// scratch; staging: [heads, 2, tokens, hd] floats; blocks go to new_pool (its top already past the residual slots).
constexpr int REQ_MAX_PAIRS = 32;

extern "C" __global__ void paged_requantize(const u8* old_pool, u8* new_pool, const uint4* old_desc, uint4* desc, int* head_blocks,
    const u8* select, u8* cls, float* staging, unsigned* top, int* error, unsigned capacity, int max_blocks, int max_tokens, int tokens,
    int hd, int vg, int tkf, int tvf)
{
    const int head = blockIdx.x;
    const uint4* od = old_desc + (long)head * max_blocks;
    uint4* d = desc + (long)head * max_blocks;
    const u8* sel = select + (long)head * max_tokens;
    u8* c = cls + (long)head * max_blocks;
    float* sk = staging + (long)head * 2 * tokens * hd;
    float* sv = sk + (long)tokens * hd;
    const int nb = head_blocks[head];
    const uint4 r = od[nb - 1];
    const int rc = desc_count(r);
    __shared__ int pairs[REQ_MAX_PAIRS], npairs;
    __shared__ int failed;

    // Classification and the format pairs in order of first appearance (one thread: a handful of blocks' flags).
    if (threadIdx.x == 0)
    {
        failed = 0;
        npairs = 0;
        auto add_pair = [&](int kf, int vf) {
            const int p = kf | (vf << 4);
            for (int i = 0; i < npairs; i++) if (pairs[i] == p) return;
            if (npairs < REQ_MAX_PAIRS) pairs[npairs++] = p; else { failed = 1; atomicExch(error, 3); }
        };
        for (int b = 0; b < nb - 1; b++)
        {
            const uint4 e = od[b];
            const int cnt = desc_count(e), kf = desc_kfmt(e), vf = desc_vfmt(e);
            int any = 0;
            for (int t = 0; t < cnt; t++) any |= sel[e.w + t];
            c[b] = any && !(kf == tkf && vf == tvf) ? 1 : 0;
            if (c[b] == 1)
                for (int t = 0; t < cnt; t++) { if (sel[e.w + t]) add_pair(tkf, tvf); else add_pair(kf, vf); }
        }
        for (int t = 0; t < rc; t++) if (sel[r.w + t]) add_pair(tkf, tvf);
        for (int b = 0; b < nb - 1; b++)
        {
            const uint4 e = od[b];
            if (c[b] != 0 || desc_count(e) == tokens) continue;
            const int p = desc_kfmt(e) | (desc_vfmt(e) << 4);
            for (int i = 0; i < npairs; i++) if (pairs[i] == p) c[b] = 2;
        }
        // The new table must fit the head's descriptors (regrouping can add a partial block per pair): count it first
        // and leave the head untouched when it does not (reported as error 2, as a full table on append).
        int needed = 1, counts[REQ_MAX_PAIRS];
        for (int i = 0; i < npairs; i++) counts[i] = 0;
        const int target = tkf | (tvf << 4);
        auto count_pair = [&](int p) { for (int i = 0; i < npairs; i++) if (pairs[i] == p) { counts[i]++; return; } };
        for (int b = 0; b < nb - 1; b++)
        {
            const uint4 e = od[b];
            const int own = desc_kfmt(e) | (desc_vfmt(e) << 4), cnt = desc_count(e);
            if (c[b] == 0) { needed++; continue; }
            for (int t = 0; t < cnt; t++) count_pair(c[b] == 1 && sel[e.w + t] ? target : own);
        }
        for (int t = 0; t < rc; t++) if (sel[r.w + t]) count_pair(target);
        for (int i = 0; i < npairs; i++) needed += (counts[i] + tokens - 1) / tokens;
        if (needed > max_blocks) { failed = 1; atomicExch(error, 2); }
    }
    __syncthreads();
    if (failed) return;

    int written = 0, start = 0, pending = 0;
    // Encodes the pending rows as one block pair of `pair` and appends its descriptor.
    auto flush = [&](int pair) {
        if (pending == 0) return;
        encode_pair(sk, sv, pending, pair & 15, pair >> 4, tokens, hd, vg, new_pool, top, capacity, error, d + written, start);
        written++;
        start += pending;
        pending = 0;
    };
    // Stages row t of a block pair (key block kp, value block vp in formats kf/vf) as the next pending row.
    auto stage = [&](const uint4& e, int t, int pair) {
        stage_row(old_pool, e, t, sk, sv, pending, tokens, hd, vg);
        pending++;
        if (pending == tokens) flush(pair);
    };

    // Kept blocks, in order.
    for (int b = 0; b < nb - 1; b++)
    {
        if (c[b] != 0) continue;
        const uint4 e = od[b];
        copy_pair(old_pool, new_pool, e, tokens, hd, vg, top, capacity, error, d + written, start);
        written++;
        start += desc_count(e);
    }
    // Each format pair's tokens, in storage order: rewritten blocks' tokens of that pair, merged partial blocks, residual rows.
    const int target = tkf | (tvf << 4);
    for (int pi = 0; pi < npairs; pi++)
    {
        const int pair = pairs[pi];
        for (int b = 0; b < nb - 1; b++)
        {
            if (c[b] == 0) continue;
            const uint4 e = od[b];
            const int own = desc_kfmt(e) | (desc_vfmt(e) << 4), cnt = desc_count(e);
            for (int t = 0; t < cnt; t++)
            {
                const int p = c[b] == 1 && sel[e.w + t] ? target : own;
                if (p == pair) stage(e, t, pair);
            }
        }
        if (pair == target)
            for (int t = 0; t < rc; t++)
                if (sel[r.w + t]) stage(make_uint4(r.x, r.y, desc_meta(rc, KV_F32, KV_F32), r.w), t, pair);
        flush(pair);
    }
    // The residual keeps its slot and its unselected rows, moved up.
    const int kept = compact_residual(old_pool, new_pool, r, sel, hd);
    if (threadIdx.x == 0)
    {
        d[written] = make_uint4(r.x, r.y, desc_meta(kept, KV_F32, KV_F32), (unsigned)start);
        head_blocks[head] = written + 1;
    }
}

// ---------------------------------------------------------------------------------------------------
// VidKV encoding on the device (the vidkv press): VidKvCodec.Encode byte for byte. Float64 statistics in the CPU's
// order, every product and sum rounded separately (__dmul_rn / __dadd_rn: the CPU's double arithmetic has no fused
// multiply-add), the stored parameters f16-rounded (f16_saturated) and reconstructions from them, round-half-even codes.
// A block is encoded whole (its outlier channels, salient tokens, means and DFT depend on all its tokens), in place:
// the new block is no larger than the old one (the host checks), so it is written over the old block's pool bytes once
// they are decoded. The bit-packed areas are built in shared memory words (atomicOr; the base-3 trit bytes by atomicAdd,
// a byte's digits summing to at most 242, so no carry reaches the next byte) and written out whole.

__device__ __forceinline__ void stage_or(unsigned* words, int byte, unsigned v) { atomicOr(words + (byte >> 2), v << (8 * (byte & 3))); }
__device__ __forceinline__ void stage_add(unsigned* words, int byte, unsigned v) { atomicAdd(words + (byte >> 2), v << (8 * (byte & 3))); }
__device__ __forceinline__ void stage_f16(unsigned* words, int byte, u16 h)
{
    stage_or(words, byte, h & 0xffu);
    stage_or(words, byte + 1, h >> 8);
}
__device__ __forceinline__ double f16_to_f64(u16 h) { return (double)f16_to_f32(h); }
__device__ __forceinline__ double clamp_d(double x, double lo, double hi) { return fmin(fmax(x, lo), hi); }
__device__ __forceinline__ double inf_d() { return __longlong_as_double(0x7ff0000000000000LL); }

// Keys of n tokens x [n, hd] (VidKvCodec.EncodeKeys): m outlier channels (widest range, ties to the lower channel) as
// INT2 per channel, the others as the signs of their real-DFT coefficients 1..n-1 (basis [n, n], float64) with mean
// and mean |coefficient|. Offsets: first/second code areas and parameters (VidKvLayout). lo, hi: [hd]; flag: [hd].
__device__ void vid_encode_keys(const float* x, int n, int hd, int m, const double* basis, int first, int second, int param, unsigned* out,
    double* lo, double* hi, int* flag)
{
    const int normal = hd - m;
    for (int c = threadIdx.x; c < hd; c += blockDim.x)
    {
        double l = inf_d(), h = -inf_d();
        for (int t = 0; t < n; t++) { const double v = x[t * hd + c]; l = fmin(l, v); h = fmax(h, v); }
        lo[c] = l; hi[c] = h;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < hd; c += blockDim.x)
    {
        const double r = __dsub_rn(hi[c], lo[c]);
        int above = 0;
        for (int c2 = 0; c2 < hd; c2++)
        {
            const double r2 = __dsub_rn(hi[c2], lo[c2]);
            above += r2 > r || (r2 == r && c2 < c);
        }
        flag[c] = above < m;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < hd; c += blockDim.x)
    {
        int ko = 0;
        for (int c2 = 0; c2 < c; c2++) ko += flag[c2];
        const int kn = c - ko;
        if (flag[c])
        {
            stage_or(out, c >> 3, 1u << (c & 7));
            const u16 sb = f16_saturated(__dsub_rn(hi[c], lo[c]) / 3.0), mb = f16_saturated(lo[c]);
            stage_f16(out, param + 2 * ko, sb);
            stage_f16(out, param + 2 * (m + ko), mb);
            const double scale = f16_to_f64(sb), mn = f16_to_f64(mb);
            for (int t = 0; t < n; t++)
            {
                const int q = scale > 0.0 ? (int)clamp_d(rint(__dsub_rn((double)x[t * hd + c], mn) / scale), 0.0, 3.0) : 0;
                const int bit = 2 * (t * m + ko);
                stage_or(out, first + (bit >> 3), (unsigned)q << (bit & 7));
            }
        }
        else
        {
            double sum = 0.0;
            for (int t = 0; t < n; t++) sum = __dadd_rn(sum, (double)x[t * hd + c]);
            stage_f16(out, param + 2 * (2 * m + normal + kn), f16_saturated(sum / n));
            double abs = 0.0;
            for (int j = 1; j < n; j++)
            {
                double y = 0.0;
                for (int t = 0; t < n; t++) y = __dadd_rn(y, __dmul_rn(basis[j * n + t], (double)x[t * hd + c]));
                abs = __dadd_rn(abs, fabs(y));
                if (y >= 0.0)
                {
                    const int bit = j * normal + kn;
                    stage_or(out, second + (bit >> 3), 1u << (bit & 7));
                }
            }
            stage_f16(out, param + 2 * (2 * m + kn), f16_saturated(n > 1 ? abs / (n - 1) : 0.0));
        }
    }
}

// Values of n tokens x [n, hd] (VidKvCodec.EncodeValues): min(s, n) salient tokens (largest squared ternary error under
// a_c = mean_t |x_tc|, ties to the lower token) as INT4 rows, the others ternary per channel (scale = mean |x| over
// them). s is the layout's salient count (its parameter slots). a: [hd]; err, flag: [n].
__device__ void vid_encode_values(const float* x, int n, int hd, int s, int first, int second, int param, unsigned* out, double* a,
    double* err, int* flag)
{
    const int sc = min(s, n);
    if (sc > 0)
    {
        for (int c = threadIdx.x; c < hd; c += blockDim.x)
        {
            double sum = 0.0;
            for (int t = 0; t < n; t++) sum = __dadd_rn(sum, fabs((double)x[t * hd + c]));
            a[c] = sum / n;
        }
        __syncthreads();
        for (int t = threadIdx.x; t < n; t += blockDim.x)
        {
            double e = 0.0;
            for (int c = 0; c < hd; c++)
            {
                const double xc = x[t * hd + c];
                const double r = a[c] > 0.0 ? __dmul_rn(a[c], clamp_d(rint(xc / a[c]), -1.0, 1.0)) : 0.0;
                const double d = __dsub_rn(xc, r);
                e = __dadd_rn(e, __dmul_rn(d, d));
            }
            err[t] = e;
        }
        __syncthreads();
    }
    for (int t = threadIdx.x; t < n; t += blockDim.x)
    {
        int above = 0;
        if (sc > 0)
            for (int t2 = 0; t2 < n; t2++) above += err[t2] > err[t] || (err[t2] == err[t] && t2 < t);
        flag[t] = sc > 0 && above < sc;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < n; t += blockDim.x)
    {
        if (!flag[t]) continue;
        int slot = 0;
        for (int t2 = 0; t2 < t; t2++) slot += flag[t2];
        stage_or(out, t >> 3, 1u << (t & 7));
        double l = inf_d(), h = -inf_d();
        for (int c = 0; c < hd; c++) { const double v = x[t * hd + c]; l = fmin(l, v); h = fmax(h, v); }
        const u16 sb = f16_saturated(__dsub_rn(h, l) / 15.0), mb = f16_saturated(l);
        stage_f16(out, param + 2 * (hd + slot), sb);
        stage_f16(out, param + 2 * (hd + s + slot), mb);
        const double scale = f16_to_f64(sb), mn = f16_to_f64(mb);
        for (int c = 0; c < hd; c++)
        {
            const int q = scale > 0.0 ? (int)clamp_d(rint(__dsub_rn((double)x[t * hd + c], mn) / scale), 0.0, 15.0) : 0;
            stage_or(out, second + slot * hd / 2 + (c >> 1), (unsigned)q << (4 * (c & 1)));
        }
    }
    const unsigned pow3[5] = { 1u, 3u, 9u, 27u, 81u };
    for (int c = threadIdx.x; c < hd; c += blockDim.x)
    {
        double sum = 0.0;
        for (int t = 0; t < n; t++) if (!flag[t]) sum = __dadd_rn(sum, fabs((double)x[t * hd + c]));
        const u16 sb = f16_saturated(n > sc ? sum / (n - sc) : 0.0);
        stage_f16(out, param + 2 * c, sb);
        const double scale = f16_to_f64(sb);
        for (int t = 0; t < n; t++)
        {
            const int trit = flag[t] || !(scale > 0.0) ? 0 : (int)clamp_d(rint((double)x[t * hd + c] / scale), -1.0, 1.0);
            const int e = t * hd + c;
            stage_add(out, first + e / 5, (unsigned)(trit + 1) * pow3[e % 5]);
        }
    }
}

// The vidkv press on the device: per head (grid y) its first selected[head] blocks (grid x; each full, of `tokens`
// tokens: the host checks) are decoded (BlockCodec.Decode's arithmetic) and re-encoded as VidKV key and value blocks in
// place; the descriptor takes the VidKV formats. basis: the real-DFT basis of `tokens` tokens (float64, [tokens, tokens],
// RealFourierBasis.Double). k_*/v_*: the VidKV layouts' area offsets and byte sizes. Shared memory
// (CudaPagedKernels.VidKvEncodeSharedBytes): 2 · max(hd, tokens) doubles, max(hd, tokens) flags, the block's rows
// [tokens, hd] floats, then the staging words of the larger VidKV block.
extern "C" __global__ void __launch_bounds__(256) paged_vidkv_encode(u8* pool, uint4* desc, const int* selected, const double* basis,
    int max_blocks, int tokens, int hd, int vg, int outliers, int salient, int k_first, int k_second, int k_param, int k_bytes, int v_first,
    int v_second, int v_param, int v_bytes)
{
    const int head = blockIdx.y, b = blockIdx.x;
    if (b >= selected[head]) return; // uniform over the block
    uint4* dp = desc + (long)head * max_blocks + b;
    const uint4 e = *dp;
    const int n = desc_count(e), wide = max(hd, tokens);
    extern __shared__ double vid_smem[];
    double* d0 = vid_smem;
    double* d1 = d0 + wide;
    int* flag = reinterpret_cast<int*>(d1 + wide);
    float* x = reinterpret_cast<float*>(flag + wide);
    unsigned* out = reinterpret_cast<unsigned*>(x + tokens * hd);
    const int words = (max(k_bytes, v_bytes) + 3) / 4;
    for (int role = 0; role < 2; role++)
    {
        const bool keys = role == 0;
        u8* block = pool + (size_t)(keys ? e.x : e.y) * 16;
        const int f = keys ? desc_kfmt(e) : desc_vfmt(e);
        for (int i = threadIdx.x; i < n * hd; i += blockDim.x) x[i] = decode_element(block, f, keys, i / hd, i % hd, tokens, hd, vg);
        for (int i = threadIdx.x; i < words; i += blockDim.x) out[i] = 0u;
        __syncthreads();
        if (keys) vid_encode_keys(x, n, hd, outliers, basis, k_first, k_second, k_param, out, d0, d1, flag);
        else vid_encode_values(x, n, hd, salient, v_first, v_second, v_param, out, d0, d1, flag);
        __syncthreads();
        unsigned* dst = reinterpret_cast<unsigned*>(block);
        for (int i = threadIdx.x; i < ((keys ? k_bytes : v_bytes) + 3) / 4; i += blockDim.x) dst[i] = out[i];
        __syncthreads();
    }
    if (threadIdx.x == 0) dp->z = desc_meta(n, KV_VIDKV_KEY, KV_VIDKV_VALUE);
}
