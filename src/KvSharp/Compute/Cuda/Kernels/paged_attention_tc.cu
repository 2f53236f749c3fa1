// Flash-decoding attention over the device paged KV cache on tensor cores (head dimension 128): the same launch
// geometry, split and merge as paged_attention.cu's kernels (paged_kv.cuh), the scores and values of every block format
// but F32/BF16 through mma.sync. Two kernels share the fragment code: paged_attn_t_gG (scores of the whole split into
// shared memory, then its softmax, then the values) and paged_attn_p_gG_vVG (bulk-copy rings, online softmax).
#include "paged_kv.cuh"

// ---- Tensor-core variant (paged_attn_t_gG, head dimension 128) ----
// Scores and values go through mma.sync.m16n8k16 (f16 operands, f32 accumulation), so no block format costs more than
// a few integer operations per element: S = Q·Kᵀ with A = the group's queries (rows = heads) and B = 8 keys, then
// O += P·V with A = the probabilities and B = 16 tokens × 8 channels. Codes enter the B operands as exact f16 integers
// (a nibble or 2-bit field OR-ed under the exponent of 1024, then one f16x2 FMA removes the offset and the shift; the
// pipelined kernel reads the masked field as an exact f16 subnormal instead, code_frag),
// FP8 E4M3 pairs converted to f16x2 (one instruction a pair on sm_89+, exact: fp8_halves), F16 as stored. The A
// operands carry the precision: each f32 value x is split into hi + lo f16 (hi = x truncated to f16's 11 significant
// bits, lo = the rest rounded), hi in the A rows of the G heads and lo in rows 8..15, so one mma yields both partial
// sums (≈22-bit operands, f32 sums).
// Per-channel key parameters are folded into the query once per block (q·k = Σ q·min + Σ (q·step)·code); per-token
// value parameters multiply the probabilities per 32-channel chunk (a chunk lies in one value group: groups of 32, 64
// or 128 channels), and their min terms are summed on the side (the pipelined kernel: one more mma, pipe_min_terms).
// F32 and BF16 blocks (the F32 residual of every head, BF16 re-quantized tokens) are not exact in f16: CUDA cores read
// them into the same accumulators.
// Lane l = 4·gid + tig: for scores it holds query head gid's channels [32·tig, 32·tig + 32) and loads key row gid of
// each 8-key tile (the same channels); for values it loads channels 32k + 4·gid + [0, 4) (4·pipe_value_quad(gid) in the
// transposed INT2 builds) of chunk k of tokens 2·tig, 2·tig + 1, 2·tig + 8, 2·tig + 9 of each 16-token step. The k order
// inside the 16-channel steps follows each format's unpacking (key_low_channel), identically in A and B.

__device__ __forceinline__ void mma_f16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// d = A·B + c, c a separate input: chains that start from the same accumulators need no copies of them.
__device__ __forceinline__ void mma_f16_from(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1, const float (&c)[4])
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// f16x2 with lo in bits 0..15 and hi in bits 16..31.
__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// (x0, x1) = hi + lo, each an f16x2: hi keeps 11 significant bits of x (exact in f16's normal range), lo the remainder.
__device__ __forceinline__ void split_f16x2(float x0, float x1, unsigned& hi, unsigned& lo)
{
    const float h0 = __uint_as_float(__float_as_uint(x0) & 0xffffe000u), h1 = __uint_as_float(__float_as_uint(x1) & 0xffffe000u);
    hi = pack_f16x2(h0, h1);
    lo = pack_f16x2(x0 - h0, x1 - h1);
}

__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned sel)
{
    unsigned r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

__device__ __forceinline__ unsigned hmul2(unsigned a, unsigned b)
{
    unsigned r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ unsigned hfma2(unsigned a, unsigned b, unsigned c)
{
    unsigned r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// As an instruction of its own (not a xor) so that ptxas folds it into the fma's operand.
__device__ __forceinline__ unsigned hneg2(unsigned a)
{
    unsigned r;
    asm("neg.f16x2 %0, %1;" : "=r"(r) : "r"(a));
    return r;
}

// (xh + xl)·s as hi + lo f16x2 pairs with packed arithmetic (2 products a 3-instruction run instead of 2 conversions,
// 2 f32 products and a hi/lo split each): hi = rn(xh·s), and xh·s − hi is exact in one fma (the error of a rounded
// product), so lo = (xh·s − hi) + xl·s keeps the ≈22-bit operand of the f32 path; where a product falls below f16's
// normal range both paths keep the same absolute 2^-25.
__device__ __forceinline__ void scaled_pair(unsigned xh, unsigned xl, unsigned s, unsigned& hi, unsigned& lo)
{
    hi = hmul2(xh, s);
    lo = hfma2(xl, s, hfma2(xh, s, hneg2(hi)));
}

// Asks L2 for a block's bytes (the warp's next block, while it computes the current one): its loads then wait for L2,
// not for device memory. One 128-byte line per lane and step.
__device__ __forceinline__ void prefetch_block(const u8* p, int bytes, int lane)
{
    for (int o = lane * 128; o < bytes; o += 32 * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
}

// Asks L2 for the warp's next block of this pass (keys or values) while it computes block bi; after its last key block,
// for its first value block, read after the softmax.
__device__ __forceinline__ void prefetch_next(const u8* pool, const uint4* bdesc, int bi, int nb, int warp, int warps, bool keys, int tokens, int vg, int lane)
{
    const bool more = bi + warps < nb;
    if (!more && !keys) return;
    const uint4 e = bdesc[more ? bi + warps : warp];
    const bool k = more && keys; // otherwise the value pass's block
    prefetch_block(pool + (size_t)(k ? e.x : e.y) * 16, block_bytes(k ? desc_kfmt(e) : desc_vfmt(e), k, tokens, 128, vg), lane);
}

// Asks L2 for the visible rows of the split's last block when it is an F32 or BF16 one (in the last split of a head: its
// residual, which the CUDA cores read row by row). Without it, the block's many dependent loads each waited for device
// memory while the other blocks kept it saturated: the split holding the residual ended ~25 us after the others (H100,
// 32K tokens). Every thread of the block, after the split's descriptors are in shared memory.
__device__ __forceinline__ void prefetch_float_tail(const u8* pool, const uint4* bdesc, int nb, int limit)
{
    if (nb <= 0) return;
    const uint4 d = bdesc[nb - 1];
    const int n = desc_visible(d, limit);
#pragma unroll
    for (int m = 0; m < 2; m++)
    {
        const int f = m == 0 ? desc_kfmt(d) : desc_vfmt(d);
        if (n == 0 || (f != KV_F32 && f != KV_BF16)) continue;
        const u8* p = pool + (size_t)(m == 0 ? d.x : d.y) * 16;
        for (int o = threadIdx.x * 128; o < n * 128 * kv_bits(f) / 8; o += blockDim.x * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
    }
}

// Asks L1 for an F32 or BF16 block's first n rows before a warp reads them token by token (tc_scores_float and
// tc_values_float wait for each token's loads in turn); other formats need nothing.
__device__ __forceinline__ void prefetch_float_l1(const u8* p, int f, int n, int lane)
{
    if (f != KV_F32 && f != KV_BF16) return;
    for (int o = lane * 128; o < n * 128 * kv_bits(f) / 8; o += 32 * 128) asm volatile("prefetch.global.L1 [%0];" ::"l"(p + o));
}

// Two codes c·2^K (K: the field's bit position, c·2^K < 1024), the bits of x under mask (within bits 0..9 and 16..25),
// as the f16x2 (c, c'): OR-ed under 1024's exponent they read 1024 + c·2^K exactly, and one FMA by (2^-K, -2^(10-K))
// leaves c. Mask and exponent go in one lop3 ((x & mask) | 0x64006400, the exponent word in a register). For K = 0 the
// FMA is an add of -1024 (the same exact result): its constant is an immediate, where an FMA's factor needs a register,
// which the compiler rebuilt in every block (2-3 instructions a factor).
template <int K>
__device__ __forceinline__ unsigned code_pair(unsigned x, unsigned mask = 0xffffffffu)
{
    constexpr unsigned S = (15u - K) << 10, O = 0x8000u | ((25u - K) << 10);
    unsigned y, r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(y) : "r"(x), "r"(mask), "r"(0x64006400u));
    if constexpr (K == 0) asm("add.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(y), "r"(O | (O << 16)));
    else asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(y), "r"(S | (S << 16)), "r"(O | (O << 16)));
    return r;
}

// The pipelined kernel's codes (RAW): a field c·2^K masked in place, within bits 0..9 and 16..25, IS an f16x2 of two
// subnormals c·2^(K−24) (f16 subnormals are the multiples of 2^-24 below 2^-14, taken exactly by the tensor cores: IEEE
// operands), so one lop3 and no f16 arithmetic. The 2^(24−K) goes where it is constant for the whole block or step:
// into the block's key steps (key_query) and the score (key_unit), into the value accumulators' units (value_exp).
// Otherwise code_pair's exact integers (the tensor-core kernel paged_attn_t).
template <int K, bool RAW>
__device__ __forceinline__ unsigned code_frag(unsigned x, unsigned mask)
{
    if constexpr (RAW) return x & mask;
    else return code_pair<K>(x, mask);
}

// K of a RAW fragment's field: of lane key element e (key_fragments) or of value fragment row i = e (value_fragments,
// channel 4·gid + i of a chunk): INT8 0, INT4 4·(e & 1), 2-bit 2·(e & 3), binary e & 7; code_top: the largest.
__device__ __forceinline__ constexpr int code_shift(int f, int e)
{
    return f == KV_INT4 ? 4 * (e & 1) : kv_bits(f) == 2 ? 2 * (e & 3) : f == KV_BINARY ? e & 7 : 0;
}
__device__ __forceinline__ constexpr int code_top(int f) { return f == KV_INT4 ? 4 : kv_bits(f) == 2 ? 6 : f == KV_BINARY ? 7 : 0; }

// FP8 E4M3 fragments. sm_89+ converts a pair of codes (a 16-bit half of a register) to f16x2 in one instruction
// (cvt.rn.f16x2.e4m3x2, SASS F2FP.F16.E4M3.UNPACK_B, which reads either half in place), exactly: E4M3 is a subset of
// f16, and the NaN codes 0x7F/0xFF give NaN as the CPU decoder does (the encoder saturates; only NaN input makes them).
// Older devices (NVRTC builds this file for the device it runs on) shift the bits into f16, 3-4 instructions a pair,
// which gives the value / 256 (0x7F/0xFF: ±480); FP8_UNIT is then the factor the fragments' users fold back in.
#if __CUDA_ARCH__ >= 890
#define FP8_CVT 1
constexpr float FP8_UNIT = 1.0f;
#else
#define FP8_CVT 0
constexpr float FP8_UNIT = 256.0f;

// Two FP8 E4M3 codes in bits 8..15 and 24..31 of y (other bits ignored) as f16x2 of their values / 256.
__device__ __forceinline__ unsigned fp8_pair(unsigned y) { return ((y >> 1) & 0x3f803f80u) | (y & 0x80008000u); }
#endif

// The f16x2 fragments (in units of FP8_UNIT) of the code pairs in bytes 0, 1 (lo: byte 0 low, byte 1 high) and 2, 3 (hi) of x.
__device__ __forceinline__ void fp8_halves(unsigned x, unsigned& lo, unsigned& hi)
{
#if FP8_CVT
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n\t}" : "=r"(lo), "=r"(hi) : "r"(x));
#else
    lo = fp8_pair(prmt(x, 0u, 0x1404u));
    hi = fp8_pair(prmt(x, 0u, 0x3424u));
#endif
}

// Of the lane's 32 key channels, the one in the low half of fragment register r (0..15); the high half holds the
// channel key_step<F>() above it. Register 2s is B's b0 of k-step s, 2s + 1 its b1 (and the query's a0/a2 likewise).
template <int F>
__device__ __forceinline__ constexpr int key_low_channel(int r)
{
    return kv_bits(F) >= 8 ? 2 * r : F == KV_INT4 ? 8 * (r >> 2) + (r & 3) : kv_bits(F) == 2 ? 16 * (r >> 3) + (r & 7) : r;
}
template <int F>
__device__ __forceinline__ constexpr int key_step() { return kv_bits(F) >= 8 ? 1 : F == KV_INT4 ? 4 : kv_bits(F) == 2 ? 8 : 16; }

// Factor between a key fragment's sums and the element's: FP8 fragments hold value / FP8_UNIT, the others the value (or
// its code); RAW codes (code_frag) with key_query's factors: 2^(24 − code_top).
template <int F, bool RAW = false>
__device__ __forceinline__ constexpr float key_unit()
{
    return F == KV_FP8 ? FP8_UNIT : RAW && kv_quantized(F) ? (float)(1 << (24 - code_top(F))) : 1.0f;
}

// key_query's factor of the step word r (lane elements 2r, 2r + 1) for RAW codes: 2^(code_top − code_shift) each, as
// f16x2 (exact powers of two), times 2 for binary (its step is 2·scale).
template <int F>
__device__ __forceinline__ constexpr unsigned code_factor(int r)
{
    constexpr int c = 15 + code_top(F) + (F == KV_BINARY ? 1 : 0);
    return (unsigned)(c - code_shift(F, 2 * r)) << 10 | (unsigned)(c - code_shift(F, 2 * r + 1)) << 26;
}

// The query A fragments of a key block of format F (what both tensor-core kernels build per block). qh/ql: the head's
// query (pre-scaled) as hi + lo f16x2 in natural pairs (word j = lane elements 2j, 2j + 1); sw/mw: the block's f16
// scale/min words of the same elements (quantized formats). Per-channel steps are folded in with packed f16 products
// (scaled_pair), Σ q·min is one more run of 8 mma with the mins as B (every column the same; rows gid and gid + 8 carry
// hi and lo: bh and bl are their sums, bh + bl the head's, no shuffles; 0 for float formats), and the pairs are then
// permuted into the format's fragment order (key_low_channel: elements c and c + key_step<F>() share a register).
// RAW (code_frag's subnormal codes c·2^(K−24)): each step is first multiplied by 2^(code_top − K) (code_factor, in the
// one hmul2 binary's doubling already took), so every product q·step·c carries the one factor 2^(code_top − 24) that
// key_unit<F, true> removes from the score. Range: the factor is ≥ 1, so the steps and their hi/lo products only move up
// from today's (a lo below f16's normal range keeps its absolute 2^-25 or gains bits; nothing is lost), and they must stay
// below 65504: |step| and |q·step| < 2^16 / 2^code_top, i.e. < 1023 for 2-bit codes (INT2, ternary), < 4095 for INT4,
// < 511 for binary (step 2·scale), against < 65504 before (q is pre-scaled by 1/sqrt(128)·log2 e ≈ 0.13: an INT2 key
// step beyond 1023 / |q| is a channel range of thousands of |q|⁻¹, not a model's).
// Warp-uniform.
template <int F, bool RAW = false>
__device__ __forceinline__ void key_query(const unsigned (&qh)[16], const unsigned (&ql)[16], const unsigned (&sw)[16], const unsigned (&mw)[16],
    unsigned (&ah)[16], unsigned (&al)[16], float& bh, float& bl)
{
    bh = bl = 0.0f;
    unsigned nh[16], nl[16];
    if constexpr (kv_quantized(F))
    {
        // min = m (INT), -s (ternary), m - s (binary: two runs); step = s, or 2s for binary. Two accumulators (even and odd
        // k-steps) halve the chain of dependent mma each block's scores wait for.
        float d[2][4] = { { 0.0f, 0.0f, 0.0f, 0.0f }, { 0.0f, 0.0f, 0.0f, 0.0f } };
#pragma unroll
        for (int s = 0; s < 8; s++)
        {
            if constexpr (F == KV_TERNARY) mma_f16(d[s & 1], qh[2 * s], ql[2 * s], qh[2 * s + 1], ql[2 * s + 1], hneg2(sw[2 * s]), hneg2(sw[2 * s + 1]));
            else mma_f16(d[s & 1], qh[2 * s], ql[2 * s], qh[2 * s + 1], ql[2 * s + 1], mw[2 * s], mw[2 * s + 1]);
            if constexpr (F == KV_BINARY) mma_f16(d[s & 1], qh[2 * s], ql[2 * s], qh[2 * s + 1], ql[2 * s + 1], hneg2(sw[2 * s]), hneg2(sw[2 * s + 1]));
        }
        bh = d[0][0] + d[1][0];
        bl = d[0][2] + d[1][2];
#pragma unroll
        for (int r = 0; r < 16; r++)
        {
            unsigned s = sw[r];
            if constexpr (RAW && code_top(F) > 0) s = hmul2(s, code_factor<F>(r));
            else if constexpr (F == KV_BINARY) s = hmul2(s, 0x40004000u);
            scaled_pair(qh[r], ql[r], s, nh[r], nl[r]);
        }
    }
    else
    {
#pragma unroll
        for (int r = 0; r < 16; r++) { nh[r] = qh[r]; nl[r] = ql[r]; }
    }
#pragma unroll
    for (int r = 0; r < 16; r++)
    {
        constexpr int S = key_step<F>();
        if constexpr (S == 1) { ah[r] = nh[r]; al[r] = nl[r]; }
        else
        {
            // Elements c and c + S (same parity) from words c/2 and c/2 + S/2.
            const int c = key_low_channel<F>(r);
            const unsigned sel = (c & 1) ? 0x7632u : 0x5410u;
            ah[r] = prmt(nh[c >> 1], nh[(c >> 1) + S / 2], sel);
            al[r] = prmt(nl[c >> 1], nl[(c >> 1) + S / 2], sel);
        }
    }
}

// The B fragments of one key row's 32 lane channels (w: their BITS 32-bit words) for the 8 k-steps (RAW: code_frag).
template <int F, bool RAW = false>
__device__ __forceinline__ void key_fragments(const unsigned* w, unsigned (&b)[16])
{
    if constexpr (F == KV_F16)
    {
#pragma unroll
        for (int r = 0; r < 16; r++) b[r] = w[r];
    }
    else if constexpr (F == KV_FP8)
    {
#pragma unroll
        for (int j = 0; j < 8; j++) fp8_halves(w[j], b[2 * j], b[2 * j + 1]);
    }
    else if constexpr (F == KV_INT8)
    {
#pragma unroll
        // The prmt's zero bytes already clear everything above the codes: RAW needs no mask.
        for (int j = 0; j < 8; j++) { b[2 * j] = code_frag<0, RAW>(prmt(w[j], 0u, 0x4140u), 0xffffffffu); b[2 * j + 1] = code_frag<0, RAW>(prmt(w[j], 0u, 0x4342u), 0xffffffffu); }
    }
    else if constexpr (F == KV_INT4)
    {
#pragma unroll
        for (int j = 0; j < 4; j++)
        {
            const unsigned x = w[j], x8 = x >> 8;
            b[4 * j] = code_frag<0, RAW>(x, 0x000f000fu);
            b[4 * j + 1] = code_frag<4, RAW>(x, 0x00f000f0u);
            b[4 * j + 2] = code_frag<0, RAW>(x8, 0x000f000fu);
            b[4 * j + 3] = code_frag<4, RAW>(x8, 0x00f000f0u);
        }
    }
    else if constexpr (kv_bits(F) == 2)
    {
#pragma unroll
        for (int j = 0; j < 2; j++)
        {
            const unsigned x = w[j], x8 = x >> 8;
            b[8 * j] = code_frag<0, RAW>(x, 0x00030003u);
            b[8 * j + 1] = code_frag<2, RAW>(x, 0x000c000cu);
            b[8 * j + 2] = code_frag<4, RAW>(x, 0x00300030u);
            b[8 * j + 3] = code_frag<6, RAW>(x, 0x00c000c0u);
            b[8 * j + 4] = code_frag<0, RAW>(x8, 0x00030003u);
            b[8 * j + 5] = code_frag<2, RAW>(x8, 0x000c000cu);
            b[8 * j + 6] = code_frag<4, RAW>(x8, 0x00300030u);
            b[8 * j + 7] = code_frag<6, RAW>(x8, 0x00c000c0u);
        }
    }
    else // binary
    {
        const unsigned x = w[0], x8 = x >> 8;
        b[0] = code_frag<0, RAW>(x, 0x00010001u); b[1] = code_frag<1, RAW>(x, 0x00020002u);
        b[2] = code_frag<2, RAW>(x, 0x00040004u); b[3] = code_frag<3, RAW>(x, 0x00080008u);
        b[4] = code_frag<4, RAW>(x, 0x00100010u); b[5] = code_frag<5, RAW>(x, 0x00200020u);
        b[6] = code_frag<6, RAW>(x, 0x00400040u); b[7] = code_frag<7, RAW>(x, 0x00800080u);
        b[8] = code_frag<0, RAW>(x8, 0x00010001u); b[9] = code_frag<1, RAW>(x8, 0x00020002u);
        b[10] = code_frag<2, RAW>(x8, 0x00040004u); b[11] = code_frag<3, RAW>(x8, 0x00080008u);
        b[12] = code_frag<4, RAW>(x8, 0x00100010u); b[13] = code_frag<5, RAW>(x8, 0x00200020u);
        b[14] = code_frag<6, RAW>(x8, 0x00400040u); b[15] = code_frag<7, RAW>(x8, 0x00800080u);
    }
}

// The lane's WORDS 32-bit words at p (16-byte aligned when WORDS >= 4).
template <int WORDS>
__device__ __forceinline__ void load_words(const u8* p, unsigned* w)
{
    if constexpr (WORDS >= 4)
    {
#pragma unroll
        for (int v = 0; v < WORDS / 4; v++)
        {
            const uint4 x = load_stream(p + 16 * v);
            w[4 * v] = x.x; w[4 * v + 1] = x.y; w[4 * v + 2] = x.z; w[4 * v + 3] = x.w;
        }
    }
    else if constexpr (WORDS == 2)
    {
        const uint2 x = __ldg(reinterpret_cast<const uint2*>(p));
        w[0] = x.x; w[1] = x.y;
    }
    else w[0] = __ldg(reinterpret_cast<const unsigned*>(p));
}

// Scores of the n visible tokens of one key block (a format with exact f16 codes) into sc[gid·chunk + j0 + t].
// qh/ql: the lane's 32 channels of head gid (pre-scaled) as hi + lo f16x2 pairs (key_query).
template <int G, int F>
__device__ __forceinline__ void tc_scores(const u8* kb, int n, int tokens, const unsigned (&qh)[16], const unsigned (&ql)[16], float* sc, int chunk, int j0, int gid, int tig)
{
    constexpr int BITS = kv_bits(F), HD = 128, WORDS = BITS; // 32 channels of BITS bits
    constexpr int NT = BITS >= 16 ? 2 : 4; // 8-key tiles whose loads are issued together
    constexpr int ROW = HD * BITS / 8;
    // The first tiles' codes are requested before the parameters, so one memory latency covers both.
    unsigned w[NT][WORDS];
#pragma unroll
    for (int u = 0; u < NT; u++) load_words<WORDS>(kb + (size_t)min(8 * u + gid, n - 1) * ROW + tig * (ROW / 4), w[u]);
    unsigned ah[16], al[16], sw[16], mw[16];
    if constexpr (kv_quantized(F))
    {
        const u8* params = kb + tokens * HD / 8 * BITS; // the lane's 32 scales (f16), mins 256 bytes later
        load_words<16>(params + tig * 64, sw);
        if constexpr (kv_params(F) == 2) load_words<16>(params + HD * 2 + tig * 64, mw);
    }
    float bh, bl;
    key_query<F>(qh, ql, sw, mw, ah, al, bh, bl);
    const float bias = bh + bl;
    for (int t0 = 0; t0 < n; t0 += 8 * NT)
    {
        if (t0 > 0)
#pragma unroll
            for (int u = 0; u < NT; u++)
                load_words<WORDS>(kb + (size_t)min(t0 + 8 * u + gid, n - 1) * ROW + tig * (ROW / 4), w[u]);
#pragma unroll
        for (int u = 0; u < NT; u++)
        {
            if (t0 + 8 * u >= n) break;
            unsigned b[16];
            key_fragments<F>(w[u], b);
            float d[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
#pragma unroll
            for (int s = 0; s < 8; s++) mma_f16(d, ah[2 * s], al[2 * s], ah[2 * s + 1], al[2 * s + 1], b[2 * s], b[2 * s + 1]);
            const int t = t0 + 8 * u + 2 * tig;
            if (gid < G)
            {
                if (t < n) sc[gid * chunk + j0 + t] = (d[0] + d[2]) * key_unit<F>() + bias;
                if (t + 1 < n) sc[gid * chunk + j0 + t + 1] = (d[1] + d[3]) * key_unit<F>() + bias;
            }
        }
    }
}

// Scores of an F32 or BF16 key block on CUDA cores (the residual): the 4 lanes of a head split each row's channels.
template <int G, int F>
__device__ __forceinline__ void tc_scores_float(const u8* kb, int n, const unsigned (&qh)[16], const unsigned (&ql)[16], float* sc, int chunk, int j0, int gid, int tig)
{
    constexpr int BITS = kv_bits(F), ROW = 128 * BITS / 8;
    float qf[32];
#pragma unroll
    for (int j = 0; j < 16; j++)
    {
        qf[2 * j] = f16_to_f32((u16)qh[j]) + f16_to_f32((u16)ql[j]);
        qf[2 * j + 1] = f16_to_f32((u16)(qh[j] >> 16)) + f16_to_f32((u16)(ql[j] >> 16));
    }
    for (int t = 0; t < n; t++)
    {
        unsigned w[BITS];
        load_words<BITS>(kb + (size_t)t * ROW + tig * (ROW / 4), w);
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; i++)
        {
            if constexpr (F == KV_F32) s += qf[i] * __uint_as_float(w[i]);
            else s += qf[i] * bf16_to_f32((u16)(w[i >> 1] >> (16 * (i & 1))));
        }
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        if (tig == 0 && gid < G) sc[gid * chunk + j0 + t] = s;
    }
}

// The lane's 4 channels 32k + 4·gid + [0, 4) of one value row (row bits at p), in the low bits of w (2 words for 16 bits).
template <int BITS>
__device__ __forceinline__ void value_piece(const u8* row, int k, int gid, unsigned* w)
{
    if constexpr (BITS == 16) { const uint2 x = __ldg(reinterpret_cast<const uint2*>(row + 64 * k + 8 * gid)); w[0] = x.x; w[1] = x.y; }
    else if constexpr (BITS == 8) w[0] = __ldg(reinterpret_cast<const unsigned*>(row + 32 * k + 4 * gid));
    else if constexpr (BITS == 4) w[0] = __ldg(reinterpret_cast<const u16*>(row + 16 * k + 2 * gid));
    else if constexpr (BITS == 2) w[0] = __ldg(row + 8 * k + gid);
    else w[0] = (unsigned)__ldg(row + 4 * k + (gid >> 1)) >> (4 * (gid & 1));
}

// The fragments of 4 INT4 channels of two tokens, x = their 2-byte pieces (token a's low, token b's high): channel i of
// token a in the low half of f[i], of token b in the high half (RAW: code_frag).
template <bool RAW = false>
__device__ __forceinline__ void int4_fragments(unsigned x, unsigned (&f)[4])
{
    const unsigned x8 = x >> 8;
    f[0] = code_frag<0, RAW>(x, 0x000f000fu); f[1] = code_frag<4, RAW>(x, 0x00f000f0u);
    f[2] = code_frag<0, RAW>(x8, 0x000f000fu); f[3] = code_frag<4, RAW>(x8, 0x00f000f0u);
}

// The fragments of the 4 2-bit channels of two tokens, x = their bytes (token a's in bits 0-7, token b's in bits 16-23;
// the other bits are ignored): channel i of token a in the low half of f[i], of token b in the high half (RAW: code_frag).
template <bool RAW = false>
__device__ __forceinline__ void int2_fragments(unsigned x, unsigned (&f)[4])
{
    f[0] = code_frag<0, RAW>(x, 0x00030003u); f[1] = code_frag<2, RAW>(x, 0x000c000cu);
    f[2] = code_frag<4, RAW>(x, 0x00300030u); f[3] = code_frag<6, RAW>(x, 0x00c000c0u);
}

// B fragments (token a's channel i low, token b's high) of the 4 channels of two tokens' pieces (RAW: code_frag).
template <int F, bool RAW = false>
__device__ __forceinline__ void value_fragments(const unsigned* a, const unsigned* b, unsigned (&f)[4])
{
    if constexpr (F == KV_F16)
    {
        f[0] = prmt(a[0], b[0], 0x5410u); f[1] = prmt(a[0], b[0], 0x7632u);
        f[2] = prmt(a[1], b[1], 0x5410u); f[3] = prmt(a[1], b[1], 0x7632u);
    }
    else if constexpr (F == KV_FP8)
    {
#if FP8_CVT
        // Channel i's codes of tokens a and b side by side: pairs 0, 1 in one register, 2, 3 in another.
        fp8_halves(prmt(a[0], b[0], 0x5140u), f[0], f[1]);
        fp8_halves(prmt(a[0], b[0], 0x7362u), f[2], f[3]);
#else
        f[0] = fp8_pair(prmt(a[0], b[0], 0x4400u)); f[1] = fp8_pair(prmt(a[0], b[0], 0x5511u));
        f[2] = fp8_pair(prmt(a[0], b[0], 0x6622u)); f[3] = fp8_pair(prmt(a[0], b[0], 0x7733u));
#endif
    }
    else if constexpr (F == KV_INT8)
    {
        f[0] = code_frag<0, RAW>(prmt(a[0], b[0], 0x4400u), 0x00ff00ffu); f[1] = code_frag<0, RAW>(prmt(a[0], b[0], 0x5511u), 0x00ff00ffu);
        f[2] = code_frag<0, RAW>(prmt(a[0], b[0], 0x6622u), 0x00ff00ffu); f[3] = code_frag<0, RAW>(prmt(a[0], b[0], 0x7733u), 0x00ff00ffu);
    }
    else if constexpr (F == KV_INT4) int4_fragments<RAW>(prmt(a[0], b[0], 0x5410u), f);
    else if constexpr (kv_bits(F) == 2) int2_fragments<RAW>(a[0] | (b[0] << 16), f);
    else
    {
        const unsigned x = (a[0] & 0xfu) | ((b[0] & 0xfu) << 16);
        f[0] = code_frag<0, RAW>(x, 0x00010001u); f[1] = code_frag<1, RAW>(x, 0x00020002u);
        f[2] = code_frag<2, RAW>(x, 0x00040004u); f[3] = code_frag<3, RAW>(x, 0x00080008u);
    }
}

// A token's value-group parameters as raw f16 bits, gpr (1, 2 or 4) groups per row.
__device__ __forceinline__ uint2 row_params(const u16* p, int row, int gpr)
{
    if (gpr == 4) return __ldg(reinterpret_cast<const uint2*>(p + row * 4));
    if (gpr == 2) return make_uint2(__ldg(reinterpret_cast<const unsigned*>(p + row * 2)), 0u);
    return make_uint2(__ldg(p + row), 0u);
}

// The f16 parameter of chunk k (channels [32k, 32k + 32)) from a row_params result.
__device__ __forceinline__ float chunk_param(uint2 x, int k, int gpr)
{
    const int g = gpr == 4 ? k : gpr == 2 ? k >> 1 : 0;
    const unsigned w = g >= 2 ? x.y : x.x;
    return f16_to_f32((u16)(w >> (16 * (g & 1))));
}

// The parameters of chunk k of two tokens (a low, b high) as one f16x2, from their row_params results.
__device__ __forceinline__ unsigned chunk_param_pair(uint2 a, uint2 b, int k, int gpr)
{
    const int g = gpr == 4 ? k : gpr == 2 ? k >> 1 : 0;
    return prmt(g >= 2 ? a.y : a.x, g >= 2 ? b.y : b.x, (g & 1) ? 0x7632u : 0x5410u);
}

// The lane's probabilities of one 16-token step (tokens 2·tig, 2·tig + 1, 2·tig + 8, 2·tig + 9) split hi + lo into the
// A operand's pairs once per step, with the format's constant folded in (FP8 fragments hold value / FP8_UNIT; binary
// steps are 2·scale): exact powers of two.
struct StepProbs
{
    unsigned h01, l01, h89, l89;
};

template <int F>
__device__ __forceinline__ StepProbs step_probs(const float (&pv)[4])
{
    constexpr float c = F == KV_FP8 ? FP8_UNIT : F == KV_BINARY ? 2.0f : 1.0f;
    StepProbs r;
    split_f16x2(pv[0] * c, pv[1] * c, r.h01, r.l01);
    split_f16x2(pv[2] * c, pv[3] * c, r.h89, r.l89);
    return r;
}

// The A operand of chunk k of one 16-token step (channels [32k, 32k + 32)): the step's probabilities times each token's
// step of the chunk's group (packed, scaled_pair: a token pair's two steps are one prmt of their rows' parameter words),
// as hi/lo pairs of tokens (2·tig, 2·tig + 1) and (2·tig + 8, 2·tig + 9); mbk += Σ p·min of the chunk's group (f32).
template <int F>
__device__ __forceinline__ StepProbs chunk_scaled(const StepProbs& P, const uint2 (&sh)[4], int k, int gpr)
{
    StepProbs a = P;
    if constexpr (kv_quantized(F))
    {
        scaled_pair(P.h01, P.l01, chunk_param_pair(sh[0], sh[1], k, gpr), a.h01, a.l01);
        scaled_pair(P.h89, P.l89, chunk_param_pair(sh[2], sh[3], k, gpr), a.h89, a.l89);
    }
    return a;
}

template <int F>
__device__ __forceinline__ StepProbs chunk_probs(const StepProbs& P, const float (&pv)[4], const uint2 (&sh)[4], const uint2 (&mh)[4], int k, int gpr, float& mbk)
{
    const StepProbs a = chunk_scaled<F>(P, sh, k, gpr);
    if constexpr (kv_quantized(F))
    {
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            float mn;
            if constexpr (F == KV_TERNARY) mn = -chunk_param(sh[u], k, gpr);
            else if constexpr (F == KV_BINARY) mn = chunk_param(mh[u], k, gpr) - chunk_param(sh[u], k, gpr);
            else mn = chunk_param(mh[u], k, gpr);
            mbk += pv[u] * mn;
        }
    }
    return a;
}

// o += P·V of chunk k of one 16-token step (the plain tensor-core kernel): A = chunk_probs (rows gid: hi, gid + 8: lo),
// B = the chunk's 4 channel tiles b0/b1 (tokens 0-7 / 8-15 of the step).
template <int F>
__device__ __forceinline__ void value_chunk(const StepProbs& P, const float (&pv)[4], const uint2 (&sh)[4], const uint2 (&mh)[4], int k, int gpr,
    const unsigned (&b0)[4], const unsigned (&b1)[4], float (&o)[16][4], float& mbk)
{
    const StepProbs a = chunk_probs<F>(P, pv, sh, mh, k, gpr, mbk);
#pragma unroll
    for (int i = 0; i < 4; i++) mma_f16(o[4 * k + i], a.h01, a.l01, a.h89, a.l89, b0[i], b1[i]);
}

// o += P·V over the n visible tokens of one value block (exact f16 codes); mb[k] += Σ_t p_t·min_t of chunk k's group.
// NS 16-token steps per iteration: their loads are all issued before the first is used.
template <int G, int F>
__device__ __forceinline__ void tc_values(const u8* vb, int n, int tokens, int vg, const float* sc, int chunk, int j0, int gid, int tig,
    float (&o)[16][4], float (&mb)[4])
{
    constexpr int BITS = kv_bits(F), HD = 128, ROW = HD * BITS / 8, PW = BITS == 16 ? 2 : 1, NS = BITS >= 16 ? 1 : 2;
    const int gpr = HD / vg;
    const u16* scales = reinterpret_cast<const u16*>(vb + tokens * ROW);
    const u16* mins = scales + tokens * gpr;
    const float* p = sc + min(gid, G - 1) * chunk + j0;
    for (int t0 = 0; t0 < n; t0 += 16 * NS)
    {
        float pv[NS][4];
        unsigned piece[NS][4][4][PW];
        uint2 sh[NS][4], mh[NS][4];
#pragma unroll
        for (int h = 0; h < NS; h++)
#pragma unroll
            for (int u = 0; u < 4; u++)
            {
                const int tk = t0 + 16 * h + 2 * tig + (u & 1) + 8 * (u >> 1), row = min(tk, n - 1);
#pragma unroll
                for (int k = 0; k < 4; k++) value_piece<BITS>(vb + (size_t)row * ROW, k, gid, piece[h][u][k]);
                if constexpr (kv_quantized(F))
                {
                    sh[h][u] = row_params(scales, row, gpr);
                    if constexpr (kv_params(F) == 2) mh[h][u] = row_params(mins, row, gpr);
                }
                pv[h][u] = gid < G && tk < n ? p[tk] : 0.0f;
            }
#pragma unroll
        for (int h = 0; h < NS; h++)
        {
            if (t0 + 16 * h >= n) break;
            const StepProbs P = step_probs<F>(pv[h]);
#pragma unroll
            for (int k = 0; k < 4; k++)
            {
                unsigned b0[4], b1[4];
                value_fragments<F>(piece[h][0][k], piece[h][1][k], b0);
                value_fragments<F>(piece[h][2][k], piece[h][3][k], b1);
                value_chunk<F>(P, pv[h], sh[h], mh[h], k, gpr, b0, b1, o, mb[k]);
            }
        }
    }
}

// o += P·V of an F32 or BF16 value block on CUDA cores, into the lane's accumulator channels (32k + 8·tig + 4e + i).
template <int G, int F>
__device__ __forceinline__ void tc_values_float(const u8* vb, int n, const float* sc, int chunk, int j0, int gid, int tig, float (&o)[16][4])
{
    constexpr int BITS = kv_bits(F), ROW = 128 * BITS / 8;
    const float* p = sc + min(gid, G - 1) * chunk + j0;
    for (int t = 0; t < n; t++)
    {
        const float pt = gid < G ? p[t] : 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++)
        {
            unsigned w[BITS / 4];
            load_words<BITS / 4>(vb + (size_t)t * ROW + (32 * k + 8 * tig) * BITS / 8, w);
#pragma unroll
            for (int c = 0; c < 8; c++)
            {
                float x;
                if constexpr (F == KV_F32) x = __uint_as_float(w[c]);
                else x = bf16_to_f32((u16)(w[c >> 1] >> (16 * (c & 1))));
                o[4 * k + (c & 3)][c >> 2] += pt * x;
            }
        }
    }
}

// The block-format switch of both kernels: FLOAT_CALL(F) for the float formats (CUDA cores), CALL(F) for the others. A
// build may keep only some formats (PIPE_FORMATS, a bit per KV_* format, set by the format-specialized builds below;
// every format otherwise): a format outside it compiles to nothing (the host never launches such a build over its
// blocks). F32 is always read: every head's residual is float32.
#ifndef PIPE_FORMATS
#define PIPE_FORMATS 0x7ff
#endif
#define KV_BUILT(F) ((((PIPE_FORMATS) >> (F)) & 1) != 0 || (F) == KV_F32)
#define KV_CASE(F, CALL) \
    case F: \
        if constexpr (KV_BUILT(F)) { CALL(F); } \
        break;
#define KV_FLOAT_OR(fmt, FLOAT_CALL, CALL) \
    switch (fmt) \
    { \
        KV_CASE(KV_F32, FLOAT_CALL) KV_CASE(KV_BF16, FLOAT_CALL) KV_CASE(KV_F16, CALL) KV_CASE(KV_FP8, CALL) KV_CASE(KV_INT8, CALL) \
        KV_CASE(KV_INT4, CALL) KV_CASE(KV_INT2, CALL) KV_CASE(KV_TERNARY, CALL) \
    default: \
        if constexpr (KV_BUILT(KV_BINARY)) { CALL(KV_BINARY); } \
        break; \
    }

template <int G>
__device__ __forceinline__ void paged_attention_tc(
    const float* __restrict__ q, const u8* __restrict__ pool, const uint4* __restrict__ desc, const int* __restrict__ head_blocks,
    const int* __restrict__ head_tokens, float* part_out, float* part_ml, int* counters, float* __restrict__ out,
    int heads, int kv_heads, int max_blocks, int tokens, int vg, int rows, int chunk_blocks, int splits, float scale, int batch)
{
    constexpr int HD = 128;
    pdl_wait(); // the tables, the appended token and the queries come from the kernel before
    const SplitWork w = split_work(desc, head_blocks, head_tokens, heads, kv_heads, max_blocks, rows, chunk_blocks, splits, G, batch);
    const int kvh = w.kvh, t = w.t, limit = w.limit, nb = w.nb;
    const uint4* hdesc = w.hdesc;
    const long first = w.first;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int chunk = chunk_blocks * tokens;
    const int gid = lane >> 2, tig = lane & 3;
    extern __shared__ __align__(128) float4 smem4[]; // as the pipelined kernel's (one symbol)
    uint4* bdesc = reinterpret_cast<uint4*>(smem4);   // [chunk_blocks] the split's descriptors (no dependent load per block)
    float* ov = reinterpret_cast<float*>(bdesc + chunk_blocks); // [G, HD] value accumulators
    int* boff = reinterpret_cast<int*>(ov + G * HD);  // [chunk_blocks + 1]
    float* sc = reinterpret_cast<float*>(boff + chunk_blocks + 1); // [G, chunk]

    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) ov[i] = 0.0f;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) bdesc[i] = hdesc[i];
    const int n = split_offsets(hdesc, nb, limit, boff);
    prefetch_float_tail(pool, bdesc, nb, limit);
    if (n == 0) empty_chunk(part_ml, first, splits, G);
    else
    {
        {
            unsigned qh[16], ql[16]; // head gid's channels [32·tig, 32·tig + 32), pre-scaled, as hi + lo (rows past the group: head G - 1)
#pragma unroll
            for (int v = 0; v < 8; v++)
            {
                const float4 x = *reinterpret_cast<const float4*>(q + ((long)t * heads + (long)kvh * G + min(gid, G - 1)) * HD + tig * 32 + 4 * v);
                split_f16x2(x.x * scale, x.y * scale, qh[2 * v], ql[2 * v]);
                split_f16x2(x.z * scale, x.w * scale, qh[2 * v + 1], ql[2 * v + 1]);
            }
            for (int bi = warp; bi < nb; bi += warps)
            {
                const int j0 = boff[bi], cnt = boff[bi + 1] - j0;
                if (cnt == 0) continue;
                const uint4 d = bdesc[bi];
                const u8* kb = pool + (size_t)d.x * 16;
                prefetch_next(pool, bdesc, bi, nb, warp, warps, true, tokens, vg, lane);
                prefetch_float_l1(kb, desc_kfmt(d), cnt, lane);
#define TSCORES(F) tc_scores<G, F>(kb, cnt, tokens, qh, ql, sc, chunk, j0, gid, tig)
#define TSCORES_FLOAT(F) tc_scores_float<G, F>(kb, cnt, qh, ql, sc, chunk, j0, gid, tig)
                KV_FLOAT_OR(desc_kfmt(d), TSCORES_FLOAT, TSCORES)
#undef TSCORES
#undef TSCORES_FLOAT
            }
        }
        __syncthreads();
        chunk_softmax(sc, chunk, n, G, part_ml, first, splits);
        __syncthreads();

        float o[16][4], mb[4];
#pragma unroll
        for (int j = 0; j < 16; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++) mb[k] = 0.0f;
        for (int bi = warp; bi < nb; bi += warps)
        {
            const int j0 = boff[bi], cnt = boff[bi + 1] - j0;
            if (cnt == 0) continue;
            const uint4 d = bdesc[bi];
            const u8* vb = pool + (size_t)d.y * 16;
            prefetch_next(pool, bdesc, bi, nb, warp, warps, false, tokens, vg, lane);
            prefetch_float_l1(vb, desc_vfmt(d), cnt, lane);
#define TVALUES(F) tc_values<G, F>(vb, cnt, tokens, vg, sc, chunk, j0, gid, tig, o, mb)
#define TVALUES_FLOAT(F) tc_values_float<G, F>(vb, cnt, sc, chunk, j0, gid, tig, o)
            KV_FLOAT_OR(desc_vfmt(d), TVALUES_FLOAT, TVALUES)
#undef TVALUES
#undef TVALUES_FLOAT
        }
        // Rows gid and gid + 8 hold the hi and lo parts; the min terms of a chunk are summed over the head's 4 lanes.
#pragma unroll
        for (int k = 0; k < 4; k++)
        {
            mb[k] += __shfl_xor_sync(0xffffffffu, mb[k], 1);
            mb[k] += __shfl_xor_sync(0xffffffffu, mb[k], 2);
        }
        if (gid < G)
#pragma unroll
            for (int j = 0; j < 16; j++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                    atomicAdd(&ov[gid * HD + 32 * (j >> 2) + 8 * tig + 4 * e + (j & 3)], o[j][e] + o[j][2 + e] + mb[j >> 2]);
        __syncthreads();
        store_chunk(ov, part_out, first, splits, G, HD);
    }
    pdl_trigger(); // the output product's blocks may start loading weights during the merge
    merge_splits(part_out, part_ml, counters, out, sc, chunk, G, HD, heads, kv_heads, splits, t, kvh);
}

// At most 168 registers (3 blocks of 4 warps per SM; unbounded it takes ~250 and only 2 fit): a few spill in the key fold.
// pfa/pfn_a, pfb/pfn_b: device memory the next kernels read, asked of L2 before the wait (prefetch_l2; 0 bytes: none).
#define PAGED_ATTN_TC(G) \
    extern "C" __global__ void __launch_bounds__(128, 3) paged_attn_t_g##G(const float* q, const u8* pool, const uint4* desc, \
        const int* head_blocks, const int* head_tokens, float* po, float* pml, int* counters, float* out, int heads, int kv_heads, \
        int max_blocks, int tokens, int vg, int rows, int chunk_blocks, int splits, float scale, int batch, const void* pfa, long pfn_a, \
        const void* pfb, long pfn_b) \
    { \
        prefetch_l2(pfa, pfn_a, pfb, pfn_b); \
        paged_attention_tc<G>(q, pool, desc, head_blocks, head_tokens, po, pml, counters, out, heads, kv_heads, max_blocks, tokens, vg, rows, chunk_blocks, \
            splits, scale, batch); \
    }
#ifndef PIPE_ONLY
PAGED_ATTN_TC(1) PAGED_ATTN_TC(2) PAGED_ATTN_TC(4) PAGED_ATTN_TC(8)
#endif

// ---- Pipelined tensor-core variant (paged_attn_p_gG, head dimension 128) ----
// The same fragments and exactness as paged_attn_t_gG, with two changes that keep device memory busy:
// * Bytes in flight: each warp streams its blocks' key and value byte ranges (contiguous, 16-byte aligned pool slots)
//   into its own shared-memory ring with the bulk copy engine (cp.async.bulk, completing on an mbarrier per entry, one
//   lane issuing). The ring is fixed-size slots of the split's largest entry, min(ring / slot, PIPE_BARS) of them
//   (issue_entry): an entry is a block's keys or its values in a slot, or, where the slots hold two blocks, both in two
//   slots on one barrier, refilled with the entry NS (or NS / 2) later once it is consumed, so a warp keeps 4-16 KB of
//   requests outstanding whatever the block format and computes from shared memory. F32/BF16 blocks (the residual;
//   CUDA-core arithmetic) longer than a quarter of a ring are staged in pieces when they end the split (the residual:
//   pipe_float_pieces), else read in place when longer than half a ring. Blocks of at most 32 tokens (the host checks): every
//   other block fits half a ring, and a block's scores and probabilities fit the registers of one 32-token step. The ring
//   is 16 KB a warp (F16 blocks of 8 KB), or 8 KB for caches of ≤ 4-bit blocks (≤ 2.5 KB each; the planner's choice,
//   CudaPagedKernels.PipelineSmallRingBytes): 4 grid blocks then fit an SM instead of 3 (16 warps in flight, not 12).
// * No score pass: each warp keeps an online softmax per head (log2 domain) with the probabilities in registers, where
//   the score mma leaves them in exactly the A-operand layout of P·V (lane gid·4 + tig holds tokens 2·tig, 2·tig + 1
//   of each 8-key tile), so a block's keys and values are consumed back to back and nothing per token goes through
//   shared memory; the block's 4 warps merge their (max, sum, accumulators) at the end. The split's length is then
//   not bounded by a score buffer.
// * P·V transposed: O^T += V^T·P^T with the values as the A operand (16 channels along m: a lane's value fragments of two
//   channel tiles are exactly an A fragment) and the probabilities as B (heads along n: column c < G the hi part of head
//   c, column G + c its lo part, for G <= 4; G = 8 runs the hi and the lo parts as two mma into the same accumulators).
//   A warp then holds 8 tiles × 4 = 32 accumulator registers instead of 16 × 4 (G = 4 left half of every A row of the
//   old P·V unused), and G <= 4 needs 8 mma per 16-token step instead of 16.

// Format-specialized builds (CudaPagedKernels.Pipelined, the default: SpecializedPipelined): the host compiles this file once
// more per (group, value group, block formats) of a cache, with PIPE_ONLY defined: one kernel, paged_attn_p_gPIPE_G_vPIPE_VG, whose
// block-format switch (KV_FLOAT_OR) keeps only the formats of PIPE_FORMATS (the float32 residual always), with
// PIPE_MIN_BLOCKS = 3 for 16 KB rings (shared memory admits 3 blocks per SM anyway; up to 168 registers) and 4 for the
// 8 KB rings of ≤ 4-bit blocks (128 registers; 5, at 96, spilled ~200 bytes and ran 6-9% slower). The generic build below (every
// format, 4 blocks per SM for the 8 KB rings of small blocks) spilled in the F16 path and its code (~19K instructions)
// missed the instruction cache: on an H100, KVzip 0.3 at 32K, one launch took 57 us for 40 MB with 20% of its stall
// samples waiting for instructions and 53K local-memory spill requests.
#ifndef PIPE_MIN_BLOCKS
#define PIPE_MIN_BLOCKS 4
#endif

constexpr int PIPE_WARPS = 4;  // warps per block, one ring each
constexpr int PIPE_BARS = 8;   // entries a warp may have in flight (an mbarrier each)
constexpr int PIPE_QROW = 164; // padded query row (32-bit words): hi/lo pairs of 32 channels, 8 words after each, 4 after the row

__device__ __forceinline__ unsigned smem_u32(const void* p)
{
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
}

__device__ __forceinline__ void mbar_init(unsigned bar) { asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar) : "memory"); }

// One arrival that also expects `bytes` of transactions: the phase completes when the copies have delivered them.
__device__ __forceinline__ void mbar_expect(unsigned bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity)
{
    asm volatile("{\n\t.reg .pred done;\n\tWAIT:\n\tmbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t@!done bra WAIT;\n\t}" ::"r"(bar), "r"(parity)
                 : "memory");
}

// bytes (a multiple of 16) from global src to shared dst by the bulk copy engine, completing on bar; the cache's lines are
// the first L2 evicts (l2_evict_first), so the stream does not push out lines still to be read (measured when the kernel
// still asked L2 for the residual with prefetch_float_tail, before reading it in place).
__device__ __forceinline__ void bulk_copy(unsigned dst, const void* src, unsigned bytes, unsigned bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(dst), "l"(src),
                 "r"(bytes), "r"(bar), "l"(l2_evict_first())
                 : "memory");
}

__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// The query copy holds head g's channels c, c + 1 (c even) as the f16x2 words hi, lo at word pipe_q(g, c), pipe_q(g, c) + 1,
// so one 16-byte load of channels c..c+3 is an mma A quad (hi, lo of k-steps c and c + 2) as key_query runs it. The
// padding puts the 8 lanes of a 16-byte load phase (2 heads × 4 lanes, reading at 32-channel strides, or 8-channel
// strides for F16 blocks: key_channel) in 8 different bank groups.
__device__ __forceinline__ int pipe_q(int g, int c) { return g * PIPE_QROW + (c >> 5) * 40 + (c & 31); }

// The transposed score mma (PIPE_T): in the format-specialized builds of INT2 or INT4 blocks (with the float32
// residual) for G <= 4, S^T = K·Q^T takes 16 keys as the A operand (lane rows gid and gid + 8 of a 16-key tile) and the
// query as B, column c = the hi (c even) or lo (c odd) part of head (c >> 1) mod G: 16 score mma a 32-token block instead
// of 32 (today's A rows past the group repeat heads), and a lane keeps head tig's scores of tokens gid, gid + 8 of each
// tile, 4 a block instead of 8 (half the exponentials), hi + lo in its own two accumulators (one add a score). The
// probabilities reach the transposed P·V's B layout (tokens 2·tig.. of column gid) through movmatrix (step_side_t), whose
// columns are then the same ones: a lane's two accumulator columns are its head's hi and lo parts, so the rescale and
// the output merge need no shuffles. Every other build keeps the layout above (query rows = heads), and so do two that
// could take it but spilled at 128 registers (NVRTC 12.4): INT2 at G = 1 (8 bytes: a pointer reloaded every block) and
// INT2 + INT4 caches (4-36 bytes at G = 1, 2, 4); their old builds do not spill.
#if defined(PIPE_ONLY) && ((((PIPE_FORMATS) & ~1) == (1 << KV_INT4) && PIPE_G <= 4) || (((PIPE_FORMATS) & ~1) == (1 << KV_INT2) && (PIPE_G == 2 || PIPE_G == 4)))
#define PIPE_T 1
#else
#define PIPE_T 0
#endif

// PIPE_T's INT2 builds read a 16-token step's value codes with one ldmatrix (pipe_int2_values) instead of 16 one-byte
// loads, which leaves lane gid with the 4 channels 32k + 4·pipe_value_quad(gid) + [0, 4) of chunk k (a permutation of
// the quads; every other build's order is gid itself); the F32 residual's values and the output follow it.
#define PIPE_T2 (PIPE_T && ((PIPE_FORMATS) & ~1) == (1 << KV_INT2))
__device__ __forceinline__ constexpr int pipe_value_quad(int gid) { return PIPE_T2 ? 2 * (gid & 3) + (gid >> 2) : gid; }

// PIPE_T's query copy (in the same G·PIPE_QROW words): head g's part p (0 hi, 1 lo) of channels c, c + 1 (c even) as one
// f16x2 word, the 32 channels of lane block t = c >> 5 in 16 consecutive words. A lane reads its column's part x and, for
// a lo column, the hi part z (scaled_pair's lo needs it; a hi column reads 16 zero words at pipe_qt_zero instead): the
// blocks at 16t + 4(t >> 1) and the lo row 72 words on put the 8 lanes of a 16-byte load phase (head g's hi and lo
// columns × 4 lanes) in 8 different bank groups, and the zero words (read by the 4 hi lanes at one address) in a group
// none of the 4 lo lanes reads at the same time.
// Inside a lane block, the words of each 4 (channels 8v..8v+7) are in the order 0, 2, 1, 3 (pipe_qt_word), so that
// one 16-byte load gives the register pairs (0, 2) and (1, 3) that pipe_query_t's bias mma take as B.
__device__ __forceinline__ constexpr int pipe_qt_word(int j) { return (j & ~3) | ((j & 1) << 1) | ((j >> 1) & 1); }
__device__ __forceinline__ constexpr int pipe_qt(int g, int part, int c)
{
    return 144 * g + 72 * part + 16 * (c >> 5) + 4 * (c >> 6) + pipe_qt_word((c & 31) >> 1);
}
template <int G>
__device__ __forceinline__ constexpr int pipe_qt_zero() { return 144 * G - 4; }

// A staged block in a warp's ring: ld.shared at its 32-bit shared address plus byte offsets from the block's start.
struct SharedSrc
{
    unsigned base;
    __device__ __forceinline__ uint4 v4(int o) const
    {
        uint4 r;
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "r"(base + o));
        return r;
    }
    __device__ __forceinline__ uint2 v2(int o) const
    {
        uint2 r;
        asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "r"(base + o));
        return r;
    }
    __device__ __forceinline__ unsigned u32(int o) const { unsigned r; asm volatile("ld.shared.u32 %0, [%1];" : "=r"(r) : "r"(base + o)); return r; }
    __device__ __forceinline__ unsigned u16(int o) const { unsigned short r; asm volatile("ld.shared.u16 %0, [%1];" : "=h"(r) : "r"(base + o)); return r; }
    __device__ __forceinline__ unsigned u8(int o) const { unsigned r; asm volatile("ld.shared.u8 %0, [%1];" : "=r"(r) : "r"(base + o)); return r; }
    // Four 8x8 b16 matrices transposed (ldmatrix .trans): lane l gives the address of row l % 8 of matrix l / 8 (at byte
    // offset o of the block, 16-byte aligned), and receives in r[i] elements (2·tig, gid) low and (2·tig + 1, gid) high of
    // matrix i.
    __device__ __forceinline__ void trans4(int o, unsigned (&r)[4]) const
    {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(base + o));
    }
};

// Channel of lane-local key element i (0..31) of lane tig. F16 rows interleave the lanes' 16-byte pieces (piece v of
// lane tig at 16·(4v + tig)), halving the shared-memory bank conflicts of 256-byte rows; the other formats keep
// 32 contiguous channels per lane (their per-channel parameters are then one contiguous run).
template <int F>
__device__ __forceinline__ int key_channel(int tig, int i) { return F == KV_F16 ? 8 * (4 * (i >> 3) + tig) + (i & 7) : 32 * tig + i; }

// The lane's key words of the row at byte offset row (lane channels per key_channel).
template <int F>
__device__ __forceinline__ void key_words(const SharedSrc& src, int row, int tig, unsigned* w)
{
    constexpr int BITS = kv_bits(F), ROW = 128 * BITS / 8;
    if constexpr (BITS >= 4)
    {
#pragma unroll
        for (int v = 0; v < BITS / 4; v++)
        {
            const uint4 x = src.v4(row + (F == KV_F16 ? 16 * (4 * v + tig) : tig * (ROW / 4) + 16 * v));
            w[4 * v] = x.x; w[4 * v + 1] = x.y; w[4 * v + 2] = x.z; w[4 * v + 3] = x.w;
        }
    }
    else if constexpr (BITS == 2)
    {
        const uint2 x = src.v2(row + tig * 8);
        w[0] = x.x; w[1] = x.y;
    }
    else w[0] = src.u32(row + tig * 4);
}

// Query A fragments for a staged key block of format F (key_query): head gid's lane channels (key_channel order; rows past
// the group repeat the group: row gid holds head gid mod G, whose probabilities the transposed P·V's lo columns take from
// these lanes) as hi + lo pairs from the padded copies, the block's scales and mins from the ring; bh + bl = Σ q·min over
// the head's channels (key_query: the hi and lo rows' parts; 0 for float formats).
template <int G, int F>
__device__ __forceinline__ void pipe_query(const SharedSrc& kb, int tokens, const unsigned* qs, unsigned (&ah)[16], unsigned (&al)[16], float& bh,
    float& bl, int gid, int tig)
{
    constexpr int BITS = kv_bits(F), HD = 128;
    const int g = gid & (G - 1);
    unsigned qh[16], ql[16], sw[16], mw[16];
#pragma unroll
    for (int v = 0; v < 4; v++) // lane elements 8v..8v+7 are 8 consecutive channels
    {
        const uint4* at = reinterpret_cast<const uint4*>(qs + pipe_q(g, key_channel<F>(tig, 8 * v)));
        const uint4 x = at[0], y = at[1];
        qh[4 * v] = x.x; ql[4 * v] = x.y; qh[4 * v + 1] = x.z; ql[4 * v + 1] = x.w;
        qh[4 * v + 2] = y.x; ql[4 * v + 2] = y.y; qh[4 * v + 3] = y.z; ql[4 * v + 3] = y.w;
    }
    if constexpr (kv_quantized(F))
    {
        const int sp = tokens * HD / 8 * BITS + 64 * tig; // the lane's 32 scales (f16), mins 256 bytes later
#pragma unroll
        for (int j = 0; j < 4; j++)
        {
            const uint4 s4 = kb.v4(sp + 16 * j);
            sw[4 * j] = s4.x; sw[4 * j + 1] = s4.y; sw[4 * j + 2] = s4.z; sw[4 * j + 3] = s4.w;
            if constexpr (kv_params(F) == 2)
            {
                const uint4 m4 = kb.v4(sp + 2 * HD + 16 * j);
                mw[4 * j] = m4.x; mw[4 * j + 1] = m4.y; mw[4 * j + 2] = m4.z; mw[4 * j + 3] = m4.w;
            }
        }
    }
    key_query<F, true>(qh, ql, sw, mw, ah, al, bh, bl);
}

// Scores (log2 units, divided by key_unit<F, true>: pipe_softmax takes the factor in its subtraction of the max) of the
// n (<= 32) visible tokens of a staged key block with exact f16 codes: s[u][e] is token 8u + 2·tig + e of head gid, -inf
// past n. Each tile's accumulators start from the bias's hi and lo rows (pipe_query; in the fragments' units), so a
// score is one add of its hi and lo rows: no bias adds, and one chain of 8 dependent mma per tile (the 4 tiles' chains
// are independent; two chains per tile cost 2 more adds a score). Codes are RAW (code_frag; key_query's step factors).
template <int G, int F>
__device__ __forceinline__ void pipe_scores(const SharedSrc& kb, int n, int tokens, const unsigned* qs, float (&s)[4][2], int gid, int tig)
{
    constexpr int ROW = 128 * kv_bits(F) / 8;
    unsigned qh[16], ql[16];
    float bh, bl;
    pipe_query<G, F>(kb, tokens, qs, qh, ql, bh, bl, gid, tig);
    bh *= 1.0f / key_unit<F, true>();
    bl *= 1.0f / key_unit<F, true>();
#pragma unroll
    for (int u = 0; u < 4; u++)
    {
        s[u][0] = s[u][1] = neg_inf();
        if (8 * u >= n) continue;
        unsigned w[kv_bits(F)], b[16];
        key_words<F>(kb, min(8 * u + gid, n - 1) * ROW, tig, w);
        key_fragments<F, true>(w, b);
        float d[4] = { bh, bh, bl, bl };
#pragma unroll
        for (int k = 0; k < 8; k++) mma_f16(d, qh[2 * k], ql[2 * k], qh[2 * k + 1], ql[2 * k + 1], b[2 * k], b[2 * k + 1]);
        const int tk = 8 * u + 2 * tig;
        if (tk < n) s[u][0] = d[0] + d[2];
        if (tk + 1 < n) s[u][1] = d[1] + d[3];
    }
}

// Channels c .. c + 3 of rows r0 .. r0 + 3 of an F32 or BF16 block (row n - 1 read again past n) as floats: a warp reads
// a row in one coalesced access, 4 rows' loads in flight (8, 32 registers, spilled in the generic build's 128).
template <int F>
__device__ __forceinline__ void float_rows(const u8* kb, int r0, int n, int c, float4 (&x)[4])
{
    constexpr int ROW = 128 * kv_bits(F) / 8;
#pragma unroll
    for (int j = 0; j < 4; j++)
    {
        const u8* row = kb + (size_t)min(r0 + j, n - 1) * ROW;
        if constexpr (F == KV_F32) x[j] = *reinterpret_cast<const float4*>(row + 4 * c);
        else
        {
            const uint2 h = *reinterpret_cast<const uint2*>(row + 2 * c);
            x[j] = make_float4(bf16_to_f32((u16)h.x), bf16_to_f32((u16)(h.x >> 16)), bf16_to_f32((u16)h.y), bf16_to_f32((u16)(h.y >> 16)));
        }
    }
}

// The same for an F32 or BF16 key block on CUDA cores (the residual, read in place when longer than half a ring): lane l
// reads channels 4l..4l+3 of each row (a warp reads a row in one coalesced access, 4 rows' loads in flight), takes its
// part of every head's dot product and the warp sums them; the lane holding token t of head gid keeps it. Each lane
// once computed its own 8 tokens over all 128 channels: 32 steps of dependent loads, ~14 us per layer at 32K tokens on
// an H100 while the other grid blocks kept device memory busy.
template <int G, int F>
__device__ __forceinline__ void pipe_scores_float(const u8* kb, int n, const unsigned* qs, float (&s)[4][2], int gid, int tig)
{
    const int lane = 4 * gid + tig, c = 4 * lane, mine = gid & (G - 1);
    float4 qv[G];
#pragma unroll
    for (int g = 0; g < G; g++)
    {
        const uint4 qw = *reinterpret_cast<const uint4*>(qs + pipe_q(g, c)); // hi, lo of c, c + 1, then of c + 2, c + 3
        qv[g] = make_float4(f16_to_f32((u16)qw.x) + f16_to_f32((u16)qw.y), f16_to_f32((u16)(qw.x >> 16)) + f16_to_f32((u16)(qw.y >> 16)),
            f16_to_f32((u16)qw.z) + f16_to_f32((u16)qw.w), f16_to_f32((u16)(qw.z >> 16)) + f16_to_f32((u16)(qw.w >> 16)));
    }
#pragma unroll
    for (int u = 0; u < 4; u++) s[u][0] = s[u][1] = neg_inf();
#pragma unroll
    for (int r0 = 0; r0 < 32; r0 += 4)
    {
        if (r0 >= n) break;
        float4 x[4];
        float_rows<F>(kb, r0, n, c, x);
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int g = 0; g < G; g++)
            {
                const int r = r0 + j; // token 8u + 2·tig + e: u = r / 8, tig = r % 8 / 2, e = r % 2
                const float d = warp_sum(qv[g].x * x[j].x + qv[g].y * x[j].y + qv[g].z * x[j].z + qv[g].w * x[j].w);
                if (tig == ((r & 7) >> 1) && mine == g && r < n) s[r >> 3][r & 1] = d; // rows past G: head gid mod G
            }
    }
}

// Accumulator columns of the transposed P·V (pipe_values): the lane holds columns 2·tig and 2·tig + 1 of every channel
// tile. Column c belongs to head c mod G (G = 8: head c); it is a head's hi part for c < G (every column for G = 8), its
// lo part for G <= c < 2G, unused past 2G.
template <int G>
__device__ __forceinline__ constexpr int column_head(int c) { return c & (G - 1); }
template <int G>
__device__ __forceinline__ constexpr bool column_hi(int c) { return G == 8 || c < G; }

// Per-head values x (the same in the 4 lanes of a head's rows gid, gid mod G) as the lane's two accumulator columns need them.
template <int G>
__device__ __forceinline__ void column_values(float x, int tig, float (&c)[2])
{
#pragma unroll
    for (int e = 0; e < 2; e++) c[e] = G == 1 ? x : __shfl_sync(0xffffffffu, x, 4 * column_head<G>(2 * tig + e));
}

// Online softmax of one block: the scores (times ku > 0, pipe_scores' unit: one product for the max, and an fma where the
// exponent's argument was a subtraction) become probabilities under the head's running max m (the 4 lanes of a head
// agree on it), l sums them, and the accumulators are rescaled when the max grows (each column by its head's factor).
template <int G>
__device__ __forceinline__ void pipe_softmax(float (&s)[4][2], float ku, float& m, float& l, float (&o)[8][4], float (&md)[4], int tig)
{
    float mx = neg_inf();
#pragma unroll
    for (int u = 0; u < 4; u++) mx = fmaxf(mx, fmaxf(s[u][0], s[u][1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2)) * ku;
    if (__any_sync(0xffffffffu, mx > m))
    {
        const float mn = fmaxf(m, mx), f = fast_exp2(m - mn);
        float fc[2];
        column_values<G>(f, tig, fc);
#pragma unroll
        for (int j = 0; j < 8; j++) { o[j][0] *= fc[0]; o[j][1] *= fc[1]; o[j][2] *= fc[0]; o[j][3] *= fc[1]; }
        md[0] *= fc[0]; md[1] *= fc[1];
        l *= f;
        m = mn;
    }
#pragma unroll
    for (int u = 0; u < 4; u++)
#pragma unroll
        for (int e = 0; e < 2; e++) { s[u][e] = fast_exp2(fmaf(s[u][e], ku, -m)); l += s[u][e]; }
}

// The lane's 4 channels 32k + 4·gid + [0, 4) of the value row at byte offset row.
template <int BITS>
__device__ __forceinline__ void value_piece_src(const SharedSrc& src, int row, int k, int gid, unsigned* w)
{
    if constexpr (BITS == 16) { const uint2 x = src.v2(row + 64 * k + 8 * gid); w[0] = x.x; w[1] = x.y; }
    else if constexpr (BITS == 8) w[0] = src.u32(row + 32 * k + 4 * gid);
    else if constexpr (BITS == 4) w[0] = src.u16(row + 16 * k + 2 * gid);
    else if constexpr (BITS == 2) w[0] = src.u8(row + 8 * k + gid);
    else w[0] = src.u8(row + 4 * k + (gid >> 1)) >> (4 * (gid & 1));
}

// A token's value-group parameters (f16 bits) at byte offset p of the block, gpr (1, 2 or 4) groups per row.
__device__ __forceinline__ uint2 row_params_src(const SharedSrc& src, int p, int row, int gpr)
{
    if (gpr == 4) return src.v2(p + row * 8);
    if (gpr == 2) return make_uint2(src.u32(p + row * 4), 0u);
    return make_uint2(src.u16(p + row * 2), 0u);
}

// row_params_src of the even row `row` and of row + 1 (both visible), GPR groups a row: one 16-, 8- or 4-byte load.
__device__ __forceinline__ void row_pair_params(const SharedSrc& src, int p, int row, int gpr, uint2& a, uint2& b)
{
    if (gpr == 4)
    {
        const uint4 x = src.v4(p + row * 8);
        a = make_uint2(x.x, x.y);
        b = make_uint2(x.z, x.w);
    }
    else if (gpr == 2)
    {
        const uint2 x = src.v2(p + row * 4);
        a = make_uint2(x.x, 0u);
        b = make_uint2(x.y, 0u);
    }
    else
    {
        const unsigned x = src.u32(p + row * 2);
        a = make_uint2(x & 0xffffu, 0u);
        b = make_uint2(x >> 16, 0u);
    }
}

// The one part of a step's probabilities that a lane's B column takes (G <= 4: hi, or lo where `lo`), in a form that
// scales to that part alone: x = the part's own pair (hi or lo), z = the hi pair where the lane takes lo, else 0.
struct StepSide
{
    unsigned x01, z01, x89, z89;
};

__device__ __forceinline__ StepSide step_side(const StepProbs& P, bool lo)
{
    return { lo ? P.l01 : P.h01, lo ? P.h01 : 0u, lo ? P.l89 : P.h89, lo ? P.h89 : 0u };
}

// The part of scaled_pair(xh, xl, s) that a step_side lane takes, in scaled_pair's 3 instructions and with its roundings:
// rn(x·s + (z·s − rn(z·s))), which is rn(xh·s) = hi where z = 0 and rn(xl·s + (xh·s − hi)) = lo where z = xh (the
// residual of a rounded product is exact in one fma). Computing both parts and selecting one cost 2 more a pair.
__device__ __forceinline__ unsigned side_scaled(unsigned x, unsigned z, unsigned s) { return hfma2(x, s, hfma2(z, s, hneg2(hmul2(z, s)))); }

// O^T += V^T·P^T of chunk k of one 16-token step for G <= 4 (the pipelined kernel, transposed): A = the chunk's value
// fragments, two channel tiles per mma (tile i's b0/b1 hold channel 32k + 4·gid + i of tokens 0-7 / 8-15: rows gid and
// gid + 8 of accumulator tile 2k + i/2 are channels 32k + 4·gid + i, i + 1), B = the lane's part of column gid from
// Q (step_side, or step_side_t), times the tokens' steps of the chunk (side_scaled).
template <int F>
__device__ __forceinline__ void value_chunk_side(const StepSide& Q, const uint2 (&sh)[4], int k, int gpr, const unsigned (&b0)[4],
    const unsigned (&b1)[4], float (&o)[8][4])
{
    unsigned c01 = Q.x01, c89 = Q.x89;
    if constexpr (kv_quantized(F))
    {
        c01 = side_scaled(Q.x01, Q.z01, chunk_param_pair(sh[0], sh[1], k, gpr));
        c89 = side_scaled(Q.x89, Q.z89, chunk_param_pair(sh[2], sh[3], k, gpr));
    }
#pragma unroll
    for (int j = 0; j < 2; j++) mma_f16(o[2 * k + j], b0[2 * j], b0[2 * j + 1], b1[2 * j], b1[2 * j + 1], c01, c89);
}

// The same for any G: B = chunk_scaled of column gid (hi or lo, see column_hi): for G = 8 both parts (two mma), else the
// lane's part from Q = step_side(P, lo) alone (value_chunk_side).
template <int G, int F>
__device__ __forceinline__ void value_chunk_t(const StepProbs& P, const StepSide& Q, const uint2 (&sh)[4], int k, int gpr,
    const unsigned (&b0)[4], const unsigned (&b1)[4], float (&o)[8][4])
{
    if constexpr (G == 8)
    {
        const StepProbs a = chunk_scaled<F>(P, sh, k, gpr);
#pragma unroll
        for (int j = 0; j < 2; j++)
        {
            mma_f16(o[2 * k + j], b0[2 * j], b0[2 * j + 1], b1[2 * j], b1[2 * j + 1], a.h01, a.h89);
            mma_f16(o[2 * k + j], b0[2 * j], b0[2 * j + 1], b1[2 * j], b1[2 * j + 1], a.l01, a.l89);
        }
    }
    else value_chunk_side<F>(Q, sh, k, gpr, b0, b1, o);
}

// One A operand pair of the value mins' mma (pipe_min_terms): the f16 parameters of chunk k of two tokens (a low, b high),
// GPR groups a row (a compile-time constant; k is the lane's row, a run-time value).
template <int GPR>
__device__ __forceinline__ unsigned min_pair(uint2 a, uint2 b, int k)
{
    const int g = GPR == 4 ? k : GPR == 2 ? k >> 1 : 0;
    return prmt(g >= 2 ? a.y : a.x, g >= 2 ? b.y : b.x, (g & 1) ? 0x7632u : 0x5410u);
}

// md += M·P^T of one 16-token step: Σ_t min_t(chunk k)·p_t for every chunk k (rows 0..3 of the m16n8 product; the lane's
// row gid is chunk gid & 3, rows 4..15 are unused) and every accumulator column (the value mma's B columns, here of the
// unscaled probabilities U): one mma (two for G = 8: hi and lo) instead of a conversion and an f32 product per token and
// chunk. Mins are exact f16 parameters (ternary: -scale; binary: mean - scale as two products, mean and -scale).
template <int G, int F, int GPR>
__device__ __forceinline__ void pipe_min_terms(const StepProbs& U, const uint2 (&sh)[4], const uint2 (&mh)[4], int gid, bool lo, float (&md)[4])
{
    const int k = gid & 3;
    unsigned a0, a2;
    if constexpr (F == KV_TERNARY) { a0 = hneg2(min_pair<GPR>(sh[0], sh[1], k)); a2 = hneg2(min_pair<GPR>(sh[2], sh[3], k)); }
    else { a0 = min_pair<GPR>(mh[0], mh[1], k); a2 = min_pair<GPR>(mh[2], mh[3], k); }
#pragma unroll
    for (int run = 0; run < (F == KV_BINARY ? 2 : 1); run++)
    {
        if (run == 1) { a0 = hneg2(min_pair<GPR>(sh[0], sh[1], k)); a2 = hneg2(min_pair<GPR>(sh[2], sh[3], k)); }
        if constexpr (G == 8)
        {
            mma_f16(md, a0, 0u, a2, 0u, U.h01, U.h89);
            mma_f16(md, a0, 0u, a2, 0u, U.l01, U.l89);
        }
        else mma_f16(md, a0, 0u, a2, 0u, lo ? U.l01 : U.h01, lo ? U.l89 : U.h89);
    }
}

// o += P·V over the n visible tokens of a staged value block with exact f16 codes, P = the lane's probabilities p (zero
// past n); md += Σ p·min per chunk k's group and column (pipe_min_terms; VG channels a group: a compile-time constant). As
// tc_values, one 16-token step at a time (the codes are in shared memory), into the transposed accumulators (value_chunk_t),
// whose units are then value_exp's for F (RAW codes). FULL: a full block of 32 tokens (n = tokens = 32).
template <int G, int F, int VG, bool FULL>
__device__ __forceinline__ void pipe_values(const SharedSrc& vb, int n, int tokens, const float (&p)[4][2], int gid, int tig,
    float (&o)[8][4], float (&md)[4])
{
    constexpr int BITS = kv_bits(F), HD = 128, ROW = HD * BITS / 8, PW = BITS == 16 ? 2 : 1, gpr = HD / VG;
    const int scales = tokens * ROW, mins = scales + tokens * gpr * 2;
    const bool lo = (gid & G) != 0; // G <= 4: this lane's B column is a lo part
#pragma unroll
    for (int h = 0; h < 2; h++)
    {
        if (16 * h >= n) break;
        unsigned piece[4][4][PW];
        uint2 sh[4], mh[4];
        float pv[4];
        // INT4: a chunk's 16 bytes of 8 tokens are one 8x8 b16 matrix whose transposed fragment is the lane's channels
        // 32k + 4·gid + [0, 4) of tokens 2·tig (low half) and 2·tig + 1 (high): value_fragments' token pair, so two
        // ldmatrix per step replace 16 2-byte loads and 8 permutes (and, by their addresses, half the shared-memory
        // wavefronts: each 2-byte load's 4 rows 128 bytes apart hit one bank group). Matrix 4x + i: chunk 2x + i / 2,
        // tokens 8·(i & 1) + [0, 8); rows past n read row n - 1, as below.
        unsigned pairs[4][2];
        if constexpr (F == KV_INT4)
        {
            const int lane = 4 * gid + tig, m = lane >> 3;
#pragma unroll
            for (int x = 0; x < 2; x++)
            {
                unsigned r[4];
                vb.trans4(min(16 * h + 8 * (m & 1) + (lane & 7), n - 1) * ROW + 16 * (2 * x + (m >> 1)), r);
                pairs[2 * x][0] = r[0]; pairs[2 * x][1] = r[1]; pairs[2 * x + 1][0] = r[2]; pairs[2 * x + 1][1] = r[3];
            }
        }
        // A full block (FULL: n = tokens = 32) reads the parameters of the lane's token pairs 2·tig, 2·tig + 1 and
        // 2·tig + 8, 2·tig + 9 in one load each (adjacent rows: 16, 8 or 4 bytes, aligned); other blocks read them row by
        // row, clamped to the last visible row (the rows past it may hold any bits; an odd token count misaligns the mins).
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            const int row = min(16 * h + 2 * tig + (u & 1) + 8 * (u >> 1), n - 1);
            if constexpr (F != KV_INT4)
#pragma unroll
                for (int k = 0; k < 4; k++) value_piece_src<BITS>(vb, row * ROW, k, gid, piece[u][k]);
            if constexpr (kv_quantized(F))
            {
                if constexpr (!FULL)
                {
                    sh[u] = row_params_src(vb, scales, row, gpr);
                    if constexpr (kv_params(F) == 2) mh[u] = row_params_src(vb, mins, row, gpr);
                }
                else if ((u & 1) == 0)
                {
                    row_pair_params(vb, scales, row, gpr, sh[u], sh[u + 1]);
                    if constexpr (kv_params(F) == 2) row_pair_params(vb, mins, row, gpr, mh[u], mh[u + 1]);
                }
            }
            pv[u] = p[2 * h + (u >> 1)][u & 1];
        }
        const StepProbs P = step_probs<F>(pv);
        const StepSide Q = step_side(P, lo);
        if constexpr (kv_quantized(F)) pipe_min_terms<G, F, gpr>(F == KV_BINARY ? step_probs<KV_INT8>(pv) : P, sh, mh, gid, lo, md);
#pragma unroll
        for (int k = 0; k < 4; k++)
        {
            unsigned b0[4], b1[4];
            if constexpr (F == KV_INT4)
            {
                int4_fragments<true>(pairs[k][0], b0);
                int4_fragments<true>(pairs[k][1], b1);
            }
            else
            {
                value_fragments<F, true>(piece[0][k], piece[1][k], b0);
                value_fragments<F, true>(piece[2][k], piece[3][k], b1);
            }
            value_chunk_t<G, F>(P, Q, sh, k, gpr, b0, b1, o);
        }
    }
}

// The pipelined kernel's P·V accumulators hold RAW value codes (code_frag: c·2^(K−24)) times the probabilities' steps:
// after blocks of format f, accumulator row i (o[j][r], i = 2·(j & 1) + r / 2: channel 32k + 4·gid + i) times
// 2^value_exp(f, i) is the value sum. The factor is constant per format and row, so it is applied once, to the output
// (pipe_add_output), not per code (code_pair's FMA); a warp whose blocks change the format (the float32 residual after
// INT2 blocks, mixed caches) moves its accumulators to the new block's units first (value_units: powers of two, exact).
// Float formats (F16, FP8 with FP8_UNIT in the probabilities, F32, BF16) and the min terms (md) are in value units: 0.
__device__ __forceinline__ constexpr int value_exp(int f, int i) { return kv_quantized(f) ? 24 - code_shift(f, i) : 0; }
__device__ __forceinline__ float pow2i(int e) { return __int_as_float((127 + e) << 23); }

// The accumulators from the units of format `from` into those of `to` (value_exp). Warp-uniform.
__device__ __forceinline__ void value_units(float (&o)[8][4], int from, int to)
{
    float f[4];
#pragma unroll
    for (int i = 0; i < 4; i++) f[i] = pow2i(value_exp(from, i) - value_exp(to, i));
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int r = 0; r < 4; r++) o[j][r] *= f[2 * (j & 1) + (r >> 1)];
}

// o += P·V of an F32 or BF16 value block on CUDA cores, into the transposed accumulators: the lane adds its channels
// 32k + 4·gid + [0, 4) (tiles 2k, 2k + 1, rows gid and gid + 8) of its hi columns; token t's probability for a column's
// head comes from the lane of that head that holds it.
template <int G, int F>
__device__ __forceinline__ void pipe_values_float(const u8* vb, int n, const float (&p)[4][2], int gid, int tig, float (&o)[8][4])
{
    constexpr int BITS = kv_bits(F), ROW = 128 * BITS / 8;
#pragma unroll
    for (int u = 0; u < 4; u++)
#pragma unroll
        for (int tt = 0; tt < 4; tt++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                const int t = 8 * u + 2 * tt + e;
                float pc[2];
#pragma unroll
                for (int ce = 0; ce < 2; ce++)
                {
                    const float x = __shfl_sync(0xffffffffu, p[u][e], 4 * column_head<G>(2 * tig + ce) + tt);
                    pc[ce] = column_hi<G>(2 * tig + ce) ? x : 0.0f;
                }
                if (t >= n) continue;
                const u8* row = vb + (size_t)t * ROW;
#pragma unroll
                for (int k = 0; k < 4; k++)
                {
                    float x[4];
                    if constexpr (F == KV_F32)
                    {
                        const float4 x0 = *reinterpret_cast<const float4*>(row + 4 * (32 * k + 4 * gid));
                        x[0] = x0.x; x[1] = x0.y; x[2] = x0.z; x[3] = x0.w;
                    }
                    else
                    {
                        const uint2 h = *reinterpret_cast<const uint2*>(row + 2 * (32 * k + 4 * gid));
                        x[0] = bf16_to_f32((u16)h.x); x[1] = bf16_to_f32((u16)(h.x >> 16)); x[2] = bf16_to_f32((u16)h.y); x[3] = bf16_to_f32((u16)(h.y >> 16));
                    }
#pragma unroll
                    for (int i = 0; i < 4; i++)
#pragma unroll
                        for (int ce = 0; ce < 2; ce++) o[2 * k + (i >> 1)][2 * (i & 1) + ce] += pc[ce] * x[i];
                }
            }
}

// PIPE_T: the B fragments of a staged key block of format F (INT2 or INT4) for the lane's query column gid (head
// (gid >> 1) mod G, its hi part for even gid, lo for odd) in the fragment order (key_low_channel), with the block's steps
// folded in as key_query does (code_factor, then the column's part of scaled_pair: side_scaled, with x = the part and
// z = the hi part for a lo column, zeros for a hi one); bias = Σ q·min of the lane's head tig's hi (bias[0]) and lo
// (bias[1]) columns, from 8 mma with the block's mins as A and the unscaled parts as B (the score tiles' initial
// accumulators are { bias[0], bias[1], bias[0], bias[1] }: rows gid and gid + 8 hold keys of the same head).
template <int G, int F>
__device__ __forceinline__ void pipe_query_t(const SharedSrc& kb, int tokens, const unsigned* qs, unsigned (&qb)[16], float (&bias)[2], int gid, int tig)
{
    static_assert(PIPE_T && (F == KV_INT2 || F == KV_INT4), "the transposed scores take INT2 and INT4 keys");
    static_assert(pipe_qt(G - 1, 1, 127) < pipe_qt_zero<G>() && pipe_qt_zero<G>() + 16 <= G * PIPE_QROW, "the query copy's room");
    constexpr int BITS = kv_bits(F), HD = 128, S = key_step<F>();
    const int g = (gid >> 1) & (G - 1);
    const unsigned* xq = qs + pipe_qt(g, gid & 1, 32 * tig);
    const unsigned* zq = (gid & 1) ? qs + pipe_qt(g, 0, 32 * tig) : qs + pipe_qt_zero<G>();
    unsigned x[16], z[16], sw[16], mw[16];
    const int sp = tokens * HD / 8 * BITS + 64 * tig; // the lane's 32 scales (f16), mins 256 bytes later
#pragma unroll
    for (int v = 0; v < 4; v++) // words 4v, 4v + 2, 4v + 1, 4v + 3 (pipe_qt_word)
    {
        const uint4 a = reinterpret_cast<const uint4*>(xq)[v], c = reinterpret_cast<const uint4*>(zq)[v];
        x[4 * v] = a.x; x[4 * v + 2] = a.y; x[4 * v + 1] = a.z; x[4 * v + 3] = a.w;
        z[4 * v] = c.x; z[4 * v + 2] = c.y; z[4 * v + 1] = c.z; z[4 * v + 3] = c.w;
        const uint4 s4 = kb.v4(sp + 16 * v), m4 = kb.v4(sp + 2 * HD + 16 * v);
        sw[4 * v] = s4.x; sw[4 * v + 1] = s4.y; sw[4 * v + 2] = s4.z; sw[4 * v + 3] = s4.w;
        mw[4 * v] = m4.x; mw[4 * v + 1] = m4.y; mw[4 * v + 2] = m4.z; mw[4 * v + 3] = m4.w;
    }
    // The mins' A quad is one 16-byte load (mw[4v..4v + 3]: words 4v, 4v + 2 in row gid, 4v + 1, 4v + 3 in row gid + 8),
    // and B a pair of the query's load: B = (x[4v], x[4v + 2]) makes row gid of d[0] right (row gid + 8: unused
    // products), B = (x[4v + 1], x[4v + 3]) row gid + 8 of d[1]; their sum is Σ q·min over the 32 channels with no
    // register copies (A = mins in both rows took 2 a mma).
    float d[2][4] = { { 0.0f, 0.0f, 0.0f, 0.0f }, { 0.0f, 0.0f, 0.0f, 0.0f } };
#pragma unroll
    for (int v = 0; v < 4; v++)
    {
        mma_f16(d[0], mw[4 * v], mw[4 * v + 1], mw[4 * v + 2], mw[4 * v + 3], x[4 * v], x[4 * v + 2]);
        mma_f16(d[1], mw[4 * v], mw[4 * v + 1], mw[4 * v + 2], mw[4 * v + 3], x[4 * v + 1], x[4 * v + 3]);
    }
    bias[0] = d[0][0] + d[1][2];
    bias[1] = d[0][1] + d[1][3];
    unsigned nq[16];
#pragma unroll
    for (int r = 0; r < 16; r++) nq[r] = side_scaled(x[r], z[r], hmul2(sw[r], code_factor<F>(r)));
#pragma unroll
    for (int r = 0; r < 16; r++)
    {
        const int c = key_low_channel<F>(r); // elements c and c + S (same parity) from words c/2 and c/2 + S/2
        qb[r] = prmt(nq[c >> 1], nq[(c >> 1) + S / 2], (c & 1) ? 0x7632u : 0x5410u);
    }
}

// PIPE_T's scores (pipe_scores' units) of the n (<= 32) visible tokens of a staged INT2 or INT4 key block: s[h][e] is
// token 16h + gid + 8e of head tig mod G, -inf past n. Per 16-key tile the lane's A rows are keys gid and gid + 8 (its 32
// channels, key_fragments as pipe_scores builds them) and the 8 mma run from the bias (pipe_query_t); a score is the sum
// of the lane's hi and lo columns.
template <int G, int F>
__device__ __forceinline__ void pipe_scores_t(const SharedSrc& kb, int n, int tokens, const unsigned* qs, float (&s)[2][2], int gid, int tig)
{
    constexpr int ROW = 128 * kv_bits(F) / 8;
    unsigned qb[16];
    float bias[2];
    pipe_query_t<G, F>(kb, tokens, qs, qb, bias, gid, tig);
    bias[0] *= 1.0f / key_unit<F, true>();
    bias[1] *= 1.0f / key_unit<F, true>();
    const float c[4] = { bias[0], bias[1], bias[0], bias[1] }; // both tiles' initial accumulators
#pragma unroll
    for (int h = 0; h < 2; h++)
    {
        s[h][0] = s[h][1] = neg_inf();
        if (16 * h >= n) continue;
        unsigned w0[kv_bits(F)], w1[kv_bits(F)], a0[16], a1[16];
        key_words<F>(kb, min(16 * h + gid, n - 1) * ROW, tig, w0);
        key_words<F>(kb, min(16 * h + 8 + gid, n - 1) * ROW, tig, w1);
        key_fragments<F, true>(w0, a0);
        key_fragments<F, true>(w1, a1);
        float d[4];
        mma_f16_from(d, a0[0], a1[0], a0[1], a1[1], qb[0], qb[1], c);
#pragma unroll
        for (int k = 1; k < 8; k++) mma_f16(d, a0[2 * k], a1[2 * k], a0[2 * k + 1], a1[2 * k + 1], qb[2 * k], qb[2 * k + 1]);
        if (16 * h + gid < n) s[h][0] = d[0] + d[1];
        if (16 * h + 8 + gid < n) s[h][1] = d[2] + d[3];
    }
}

// pipe_scores_float in PIPE_T's layout: the query's hi and lo parts from their rows (pipe_qt); the lanes holding token r
// of head g (gid = r mod 8, tig mod G = g) keep it.
template <int G, int F>
__device__ __forceinline__ void pipe_scores_float_t(const u8* kb, int n, const unsigned* qs, float (&s)[2][2], int gid, int tig)
{
    const int lane = 4 * gid + tig, c = 4 * lane;
    float4 qv[G];
#pragma unroll
    for (int g = 0; g < G; g++)
    {
        const unsigned h0 = qs[pipe_qt(g, 0, c)], h1 = qs[pipe_qt(g, 0, c + 2)], l0 = qs[pipe_qt(g, 1, c)], l1 = qs[pipe_qt(g, 1, c + 2)];
        qv[g] = make_float4(f16_to_f32((u16)h0) + f16_to_f32((u16)l0), f16_to_f32((u16)(h0 >> 16)) + f16_to_f32((u16)(l0 >> 16)),
            f16_to_f32((u16)h1) + f16_to_f32((u16)l1), f16_to_f32((u16)(h1 >> 16)) + f16_to_f32((u16)(l1 >> 16)));
    }
#pragma unroll
    for (int h = 0; h < 2; h++) s[h][0] = s[h][1] = neg_inf();
#pragma unroll
    for (int r0 = 0; r0 < 32; r0 += 4)
    {
        if (r0 >= n) break;
        float4 x[4];
        float_rows<F>(kb, r0, n, c, x);
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int g = 0; g < G; g++)
            {
                const int r = r0 + j; // token 16h + gid + 8e: h = r / 16, gid = r % 8, e = r / 8 % 2
                const float d = warp_sum(qv[g].x * x[j].x + qv[g].y * x[j].y + qv[g].z * x[j].z + qv[g].w * x[j].w);
                if (gid == (r & 7) && (tig & (G - 1)) == g && r < n) s[r >> 4][(r >> 3) & 1] = d;
            }
    }
}

// PIPE_T's online softmax of one block (pipe_softmax's math): a head's 32 scores lie in the 8 lanes of its tig (4 each),
// so the max goes over gid (3 shuffles), and the lane's two accumulator columns are its own head's: no column shuffles.
__device__ __forceinline__ void pipe_softmax_t(float (&s)[2][2], float ku, float& m, float& l, float (&o)[8][4], float (&md)[4])
{
    float mx = fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16)) * ku;
    if (__any_sync(0xffffffffu, mx > m))
    {
        const float mn = fmaxf(m, mx), f = fast_exp2(m - mn);
#pragma unroll
        for (int j = 0; j < 8; j++) { o[j][0] *= f; o[j][1] *= f; o[j][2] *= f; o[j][3] *= f; }
        md[0] *= f; md[1] *= f;
        l *= f;
        m = mn;
    }
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int e = 0; e < 2; e++) { s[h][e] = fast_exp2(fmaf(s[h][e], ku, -m)); l += s[h][e]; }
}

// The transpose of an 8x8 b16 matrix whose row r the lanes 4r..4r+3 hold (elements 2·tig, 2·tig + 1 of a lane's word).
__device__ __forceinline__ unsigned movmatrix_t(unsigned x)
{
    unsigned r;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(x));
    return r;
}

// PIPE_T: a 16-token step's StepSide (the lane's B column gid of the transposed P·V, tokens 2·tig, 2·tig + 1 and
// 2·tig + 8, 2·tig + 9) from the probabilities the lane holds, p0 and p1 of tokens gid and gid + 8 of head tig: the word
// (hi, lo) of p0 (split_f16x2's split) is row gid, columns 2·tig (hi) and 2·tig + 1 (lo) of an 8x8 matrix of tokens ×
// columns, which movmatrix turns into column gid's tokens 2·tig, 2·tig + 1: x, the lane's part; the word shifted (the
// hi part in the lo column, 0 in the hi column) gives z, the hi part for a lo column. 4 movmatrix a step replace
// step_probs' 2 splits of a token pair and step_side's 4 selects.
__device__ __forceinline__ StepSide step_side_t(float p0, float p1)
{
    const float h0 = __uint_as_float(__float_as_uint(p0) & 0xffffe000u), h1 = __uint_as_float(__float_as_uint(p1) & 0xffffe000u);
    const unsigned w0 = pack_f16x2(h0, p0 - h0), w1 = pack_f16x2(h1, p1 - h1);
    return { movmatrix_t(w0), movmatrix_t(w0 << 16), movmatrix_t(w1), movmatrix_t(w1 << 16) };
}

// PIPE_T2: the value codes of one 16-token step of a staged INT2 block (rows past n read row n - 1) as pairs[k][s]: the
// lane's byte of chunk k (channels 32k + 4·pipe_value_quad(gid) + [0, 4)) of tokens 2·tig + 8s (bits 0-7) and
// 2·tig + 8s + 1 (bits 16-23), the form value_fragments' masks take (the other bytes are masked off). One ldmatrix .trans
// (matrix 2x + s: tokens 8s + [0, 8), bytes 16x + [0, 16) of their 32-byte rows) gives lane gid the bytes 16x + 2·gid and
// 16x + 2·gid + 1 of its 4 tokens: chunk 2x + (gid >> 2)'s bytes 2·(gid & 3), 2·(gid & 3) + 1. A P·V mma takes one
// chunk (its B holds that chunk's value steps), so lanes gid and gid ^ 4 swap halves (one shuffle a register): the low
// lane (gid < 4) keeps the even byte of its chunk 2x and takes its partner's even byte of chunk 2x + 1, the high lane the
// odd bytes of both (its own chunk 2x + 1's, its partner's of chunk 2x); one prmt a pair picks a lane's byte (shifted
// down for the high lane: the masks are those of byte 0). This replaces 16 one-byte loads (2 wavefronts each: the
// tig rows 64 bytes apart share banks) and their 8 pair merges with 1 ldmatrix, 4 shuffles and 8 prmt.
__device__ __forceinline__ void pipe_int2_values(const SharedSrc& vb, int n, int h, int gid, int tig, unsigned (&pairs)[4][2])
{
    const int lane = 4 * gid + tig, m = lane >> 3;
    unsigned r[4];
    vb.trans4(min(16 * h + 8 * (m & 1) + (lane & 7), n - 1) * 32 + 16 * (m >> 1), r);
    // the low lane's chunk 2x from r's bytes 0, 2 and chunk 2x + 1 from z's; the high lane's chunk 2x from z's bytes 1, 3
    // and chunk 2x + 1 from r's
    const unsigned sel = gid < 4 ? 0x3210u : 0x7765u;
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        const unsigned z = __shfl_xor_sync(0xffffffffu, r[i], 16);
        pairs[2 * (i >> 1)][i & 1] = prmt(r[i], z, sel);
        pairs[2 * (i >> 1) + 1][i & 1] = prmt(z, r[i], sel); // the operands swapped: the selector's nibbles ^ 4
    }
}

// PIPE_T's o += P·V over the n visible tokens of a staged INT2 or INT4 value block: pipe_values with the probabilities
// p[h][e] (token 16h + gid + 8e of head tig) moved to the B layout by step_side_t; the value fragments, their parameters,
// the min terms and the chunk products as pipe_values (x is the lane's unscaled part: the min terms' B).
template <int G, int F, int VG, bool FULL>
__device__ __forceinline__ void pipe_values_t(const SharedSrc& vb, int n, int tokens, const float (&p)[2][2], int gid, int tig,
    float (&o)[8][4], float (&md)[4])
{
    static_assert(F == KV_INT2 || F == KV_INT4, "the transposed scores' values are INT2 or INT4");
    constexpr int BITS = kv_bits(F), HD = 128, ROW = HD * BITS / 8, gpr = HD / VG;
    const int scales = tokens * ROW, mins = scales + tokens * gpr * 2;
#pragma unroll
    for (int h = 0; h < 2; h++)
    {
        if (16 * h >= n) break;
        unsigned piece[4][4][1], pairs[4][2];
        uint2 sh[4], mh[4];
        if constexpr (F == KV_INT4)
        {
            const int lane = 4 * gid + tig, m = lane >> 3; // as pipe_values
#pragma unroll
            for (int x = 0; x < 2; x++)
            {
                unsigned r[4];
                vb.trans4(min(16 * h + 8 * (m & 1) + (lane & 7), n - 1) * ROW + 16 * (2 * x + (m >> 1)), r);
                pairs[2 * x][0] = r[0]; pairs[2 * x][1] = r[1]; pairs[2 * x + 1][0] = r[2]; pairs[2 * x + 1][1] = r[3];
            }
        }
        else if constexpr (PIPE_T2) pipe_int2_values(vb, n, h, gid, tig, pairs);
#pragma unroll
        for (int u = 0; u < 4; u++)
        {
            const int row = min(16 * h + 2 * tig + (u & 1) + 8 * (u >> 1), n - 1);
            if constexpr (F != KV_INT4 && !PIPE_T2)
#pragma unroll
                for (int k = 0; k < 4; k++) value_piece_src<BITS>(vb, row * ROW, k, gid, piece[u][k]);
            if constexpr (!FULL)
            {
                sh[u] = row_params_src(vb, scales, row, gpr);
                mh[u] = row_params_src(vb, mins, row, gpr);
            }
            else if ((u & 1) == 0)
            {
                row_pair_params(vb, scales, row, gpr, sh[u], sh[u + 1]);
                row_pair_params(vb, mins, row, gpr, mh[u], mh[u + 1]);
            }
        }
        const StepSide Q = step_side_t(p[h][0], p[h][1]);
        pipe_min_terms<G, F, gpr>(StepProbs{ Q.x01, Q.x01, Q.x89, Q.x89 }, sh, mh, gid, false, md);
#pragma unroll
        for (int k = 0; k < 4; k++)
        {
            unsigned b0[4], b1[4];
            if constexpr (F == KV_INT4)
            {
                int4_fragments<true>(pairs[k][0], b0);
                int4_fragments<true>(pairs[k][1], b1);
            }
            else if constexpr (PIPE_T2)
            {
                int2_fragments<true>(pairs[k][0], b0);
                int2_fragments<true>(pairs[k][1], b1);
            }
            else
            {
                value_fragments<F, true>(piece[0][k], piece[1][k], b0);
                value_fragments<F, true>(piece[2][k], piece[3][k], b1);
            }
            value_chunk_side<F>(Q, sh, k, gpr, b0, b1, o);
        }
    }
}

// pipe_values_float in PIPE_T's layout: token t's probability for the lane's head comes from the lane gid = t mod 8 of the
// same tig; the lane adds to its hi column (2·tig) only.
template <int G, int F>
__device__ __forceinline__ void pipe_values_float_t(const u8* vb, int n, const float (&p)[2][2], int gid, int tig, float (&o)[8][4])
{
    constexpr int BITS = kv_bits(F), ROW = 128 * BITS / 8;
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int e = 0; e < 2; e++)
#pragma unroll 1
            for (int tt = 0; tt < 8; tt++)
            {
                const int t = 16 * h + 8 * e + tt;
                const float pc = __shfl_sync(0xffffffffu, p[h][e], 4 * tt + tig);
                if (t >= n) break;
                const u8* row = vb + (size_t)t * ROW;
#pragma unroll
                for (int k = 0; k < 4; k++)
                {
                    float x[4];
                    if constexpr (F == KV_F32)
                    {
                        const float4 x0 = *reinterpret_cast<const float4*>(row + 4 * (32 * k + 4 * pipe_value_quad(gid)));
                        x[0] = x0.x; x[1] = x0.y; x[2] = x0.z; x[3] = x0.w;
                    }
                    else
                    {
                        const uint2 b = *reinterpret_cast<const uint2*>(row + 2 * (32 * k + 4 * pipe_value_quad(gid)));
                        x[0] = bf16_to_f32((u16)b.x); x[1] = bf16_to_f32((u16)(b.x >> 16)); x[2] = bf16_to_f32((u16)b.y); x[3] = bf16_to_f32((u16)(b.y >> 16));
                    }
#pragma unroll
                    for (int i = 0; i < 4; i++) o[2 * k + (i >> 1)][2 * (i & 1)] += pc * x[i];
                }
            }
}

// Bytes of a block staged through a warp's ring (a multiple of 16; at most half the ring for 32 tokens: 8 KB for F16 in
// 16 KB rings, 2.5 KB for INT4 in 8 KB ones, so two entries always fit an empty ring), or 0 for a block read in place.
// F32/BF16 blocks (the residual) stage their n visible rows when those fit half a ring (16 F32 rows, 32 BF16 rows in
// 16 KB; 8 / 16 in 8 KB): read in place, a row at a time, they were the last split's tail (~25 us at 32K tokens on an
// H100); longer ones go in pieces when they end the split (the residual, pipe_float_pieces), else are read in place.
__device__ __forceinline__ unsigned stage_bytes(int f, bool keys, int tokens, int vg, int n, unsigned ring)
{
    if (f == KV_F32 || f == KV_BF16)
    {
        const unsigned b = (unsigned)n * (unsigned)(128 * kv_bits(f) / 8);
        return b <= ring / 2 ? b : 0u;
    }
    return ((unsigned)block_bytes(f, keys, tokens, 128, vg) + 15u) & ~15u;
}

// A split's descriptor as the pipelined kernel keeps it in shared memory: the token count replaced by the tokens the
// row sees (0: skipped), and the first-token index (no longer needed) by the staged bytes of keys (bits 0..15) and
// values (16..31), so neither the producer nor the consumer decodes formats and sizes per block.
__device__ __forceinline__ uint4 pipe_desc(uint4 d, int limit, int tokens, int vg, unsigned ring)
{
    const int n = desc_visible(d, limit);
    const unsigned ks = n ? stage_bytes(desc_kfmt(d), true, tokens, vg, n, ring) : 0u, vs = n ? stage_bytes(desc_vfmt(d), false, tokens, vg, n, ring) : 0u;
    d.z = (d.z & ~0xffffu) | (unsigned)n;
    d.w = ks | (vs << 16);
    return d;
}

// The split's last block when keys and values are both F32/BF16 (the head's residual, in the head's last split) and its
// visible rows do not fit a quarter of a ring: written as several descriptors of at most a quarter of a ring of rows each
// (8 F32 rows in 16 KB rings, 4 in 8 KB ones; at most 8 pieces of a 32-row block: the host's MaxExtraPieces) at
// bdesc[i..], each staged through a ring like any other block, so consecutive warps take the pieces and the bulk copy
// engine brings them with the split's first copies. A quarter, not half a ring: the split's slot size is its largest
// entry, so a residual of half a ring would leave its split 2 slots a warp (KIVI-2's other splits have 5), and more, smaller
// pieces spread its CUDA-core rows over the 4 warps. Read in place (17-31 F32 rows, CUDA cores, row by row from L2) the
// residual was the last split's tail. Returns the descriptors written (1: the block as pipe_desc left it); *big: the
// largest entry (bytes) of those.
__device__ __forceinline__ int pipe_float_pieces(uint4 d, unsigned ring, uint4* at, unsigned* big)
{
    const int kf = desc_kfmt(d), vf = desc_vfmt(d), n = desc_count(d);
    const bool floats = (kf == KV_F32 || kf == KV_BF16) && (vf == KV_F32 || vf == KV_BF16);
    const int krow = 128 * kv_bits(kf) / 8, vrow = 128 * kv_bits(vf) / 8;
    const int rows = (int)(ring / 4) / max(krow, vrow);
    if (!floats || n <= rows)
    {
        at[0] = d;
        *big = max(d.w & 0xffffu, d.w >> 16);
        return 1;
    }
    const int pieces = (n + rows - 1) / rows;
    for (int p = 0; p < pieces; p++)
    {
        const int r0 = p * rows, m = min(rows, n - r0);
        at[p] = make_uint4(d.x + (unsigned)(r0 * krow / 16), d.y + (unsigned)(r0 * vrow / 16), (d.z & ~0xffffu) | (unsigned)m,
            (unsigned)(m * krow) | ((unsigned)(m * vrow) << 16));
    }
    *big = (unsigned)(rows * max(krow, vrow));
    return pieces;
}

__device__ __forceinline__ void mbar_arrive(unsigned bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory"); }

// A warp's ring is NS fixed slots of S bytes (the split's largest entry, so any entry fits any slot), used one of two ways,
// the same for the whole grid block (the prologue picks it from S):
// * side entries (F16, INT8, INT4 blocks, whose slots hold less than two blocks' keys and values): entry e of the warp
//   (its block warp + PIPE_WARPS·(e >> 1): keys for even e, values for odd) lives in slot e % NS on barrier e % NS, so a
//   block's key slot is refilled as soon as its scores are done;
// * pair entries (where NS >= 4, so the slots hold two blocks' keys and values: KIVI-2's INT2 blocks in 8 KB rings, FP8
//   blocks in 16 KB ones): entry e is block warp + PIPE_WARPS·e, its keys in slot 2·(e % NP) and its values in the next,
//   both completing on barrier e % NP (NP = NS / 2) with one expect_tx. A block costs one issue, one wait and one
//   __syncwarp instead of two each: 6.6% of KIVI-2's executed instructions and 2.5-5% of its step (branch gpuslots,
//   variant P, pairs everywhere, on an H100), where F16 and INT4 blocks, of which a pair of slots holds one, were no faster.
// Entry e completes in its barrier's phase e / (barriers in rotation). issue_entry starts entry e on barrier b (lane 0
// only): the bulk copies of its bytes, or, for an entry that stages nothing (read in place, or a block the row does not
// see), a plain arrival, so that the barrier's phases stay in step with its entries and the consumer's parity needs no
// count of staged entries.
__device__ __forceinline__ void issue_desc(int e, unsigned b, bool pair, uint4 d, const u8* pool, unsigned ring0, unsigned slot, unsigned bar0)
{
    const unsigned bar = bar0 + 8 * b;
    const unsigned ks = d.w & 0xffffu, vs = d.w >> 16;
    if (pair)
    {
        if (ks + vs != 0)
        {
            mbar_expect(bar, ks + vs);
            if (ks) bulk_copy(ring0 + 2 * b * slot, pool + (size_t)d.x * 16, ks, bar);
            if (vs) bulk_copy(ring0 + (2 * b + 1) * slot, pool + (size_t)d.y * 16, vs, bar);
        }
        else mbar_arrive(bar);
    }
    else
    {
        const bool keys = (e & 1) == 0;
        const unsigned s = keys ? ks : vs;
        if (s != 0)
        {
            mbar_expect(bar, s);
            bulk_copy(ring0 + b * slot, pool + (size_t)(keys ? d.x : d.y) * 16, s, bar);
        }
        else mbar_arrive(bar);
    }
}

// issue_desc for entry e of the warp's fixed run: its block's descriptor (pipe_desc) from the descriptors' room.
__device__ __forceinline__ void issue_entry(int e, unsigned b, bool pair, const uint4* bdesc, int warp, const u8* pool, unsigned ring0, unsigned slot, unsigned bar0)
{
    issue_desc(e, b, pair, bdesc[warp + PIPE_WARPS * (pair ? e : e >> 1)], pool, ring0, slot, bar0);
}

// Block stealing (STEAL, batch launches that merge in the kernel; CudaPagedKernels.BlockClaims): instead of a fixed run of
// the head's blocks, each warp of each of the head's units claims its blocks from the head's pool, all but its last block,
// STEAL_GRAIN at a time with an atomic add on the high half of the head's arrival counter (the low half counts the units'
// arrivals, last_split; the last unit's reset to 0 clears both). Why: one wave of units with equal runs still ends unit by
// unit: at 8 x 32K the units sharing an SM ended up to 17 us apart (KIVI-2, which is instruction-bound: the SM then runs
// its tail with fewer warps), and at KIVI-4 the SMs of some GPCs ended ~25 us before the others (memory-bound: a GPC's
// share of the bandwidth), a block timeline of stop 30 (docs/benchmarks.md). With claims, units that run faster take
// more blocks and the head's units end together; the partial results and the merge do not care which blocks a unit read.
// The head's last block (the residual, staged in pieces) stays with the head's last split. A warp keeps its blocks'
// descriptors in a ring of STEAL_QN in shared memory (after the pieces, in the descriptors' room: the planner gives it
// STEAL_ROOM entries at least): a claim's atomic goes out at one block, its raw descriptors come by cp.async at the next,
// and they are turned into pipe_desc's form at the one after, so neither round trip stalls the warp; steal_ensure waits
// for them only where the ring would otherwise issue past its claims. scripts/steal-model.py replays the protocol (every
// block read once, every entry issued once and in order, the rings never overwritten) over random heads and schedules.
// Block claiming (STEAL) is a build of its own (PIPE_STEAL, with PIPE_ONLY; CudaPagedKernels.BlockClaims), launched only
// where the host plans claims (batch launches, never with merge_grid): in stop 30 the claiming copy of the kernel in the
// same build made the fixed runs' path up to 0.97% slower a step. In stop 31 (8 x 32K, H100) claims took 3.3% off a
// KIVI-4 step and cost KIVI-2 6.4%, KVzip 0.3 + INT4 1.6%, KVzip 0.3 F16 1.2% (F16 and FP8 unchanged), so the host takes
// them for one-wave launches over INT4 caches with long units only (two waves at 8 x 128K: KIVI-4 +1.2%, KVzip 0.3 +
// INT4 +3.8%; CudaPagedKernels.ClaimsPay).
#if defined(PIPE_ONLY) && defined(PIPE_STEAL)
#define PIPE_STEAL_BUILD 1
#else
#define PIPE_STEAL_BUILD 0
#endif
constexpr int STEAL_GRAIN = 4;  // blocks a claim
constexpr int STEAL_FIRST = 8;  // blocks of a warp's first claim (the prologue's, waited for)
constexpr int STEAL_QN = 16;    // a warp's descriptor ring
constexpr int STEAL_PIECES = 8; // the last block's pieces at most (pipe_float_pieces)
// The descriptors' room claims take (CudaPagedKernels.StealRoomBlocks): the pieces, each warp's ring and raw descriptors, and
// the grid block's StealShared (two entries).
constexpr int STEAL_ROOM = STEAL_PIECES + PIPE_WARPS * (STEAL_QN + STEAL_GRAIN) + 2;

__device__ __forceinline__ void cp_async16(void* dst, const void* src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
    asm volatile("cp.async.commit_group;" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// The largest entry a claimed block may stage: full blocks of the build's formats (float blocks past it are read in
// place, steal_desc).
__device__ __forceinline__ unsigned steal_slot(int tokens, int vg, unsigned ring)
{
    unsigned s = 0u;
#pragma unroll
    for (int f = KV_F16; f <= KV_BINARY; f++)
        if (f != KV_BF16 && (((PIPE_FORMATS) >> f) & 1) != 0)
            s = max(s, max(stage_bytes(f, true, tokens, vg, tokens, ring), stage_bytes(f, false, tokens, vg, tokens, ring)));
    return s;
}

// pipe_desc of a claimed block, whose float keys or values larger than a slot are read in place.
__device__ __forceinline__ uint4 steal_desc(uint4 d, int limit, int tokens, int vg, unsigned ring, unsigned slot)
{
    d = pipe_desc(d, limit, tokens, vg, ring);
    unsigned ks = d.w & 0xffffu, vs = d.w >> 16;
    if (ks > slot) ks = 0u;
    if (vs > slot) vs = 0u;
    d.w = ks | (vs << 16);
    return d;
}

// A grid block's claims (STEAL), in shared memory: the head's descriptors and counter, its pool and the row's visible
// tokens. A warp's descriptors of its blocks 0 .. avail - 1 are (or were) in its ring (block i at i % STEAL_QN, after
// the pieces); its other state is three registers (few: the kernel runs at its 128-register bound): avail, cf (raw
// descriptors waiting in its raw area, cp.async, in the low byte; STEAL_PENDING, STEAL_DONE) and lane 0's pend (a claim's
// old counter, used a block after its atomic went out, so the warp does not wait for it).
struct StealShared
{
    const uint4* hd;
    int* ctr;
    int pool, limit;
};
static_assert(sizeof(StealShared) <= 32, "StealShared lives in two descriptor entries");
constexpr int STEAL_PENDING = 0x100, STEAL_DONE = 0x200;

__device__ __forceinline__ uint4* steal_ring(uint4* bdesc, int warp) { return bdesc + STEAL_PIECES + warp * STEAL_QN; }
__device__ __forceinline__ uint4* steal_raw(uint4* bdesc, int warp) { return bdesc + STEAL_PIECES + PIPE_WARPS * STEAL_QN + warp * STEAL_GRAIN; }

// One step of the warp's claims: raw descriptors into the ring, a claim's result into raw descriptors, or (with `claim`)
// a new claim.
template <int VG>
__device__ __forceinline__ void steal_step(const StealShared& sh, uint4* bdesc, int warp, int& avail, int& cf, int& pend, bool claim,
    int tokens, unsigned ring, unsigned slot)
{
    const int lane = threadIdx.x & 31, craw = cf & 0xff;
    if (craw > 0)
    {
        if (lane < craw)
        {
            cp_async_wait_all();
            steal_ring(bdesc, warp)[(avail + lane) % STEAL_QN] = steal_desc(steal_raw(bdesc, warp)[lane], sh.limit, tokens, VG, ring, slot);
        }
        __syncwarp();
        avail += craw;
        cf &= ~0xff;
    }
    if (cf & STEAL_PENDING)
    {
        const int base = __shfl_sync(0xffffffffu, pend, 0) >> 16;
        const int cnt = max(0, min(STEAL_GRAIN, sh.pool - base));
        if (lane < cnt) cp_async16(steal_raw(bdesc, warp) + lane, sh.hd + base + lane);
        cf = (cf & ~STEAL_PENDING) | cnt | (base + STEAL_GRAIN >= sh.pool ? STEAL_DONE : 0);
    }
    else if (claim && !(cf & STEAL_DONE))
    {
        if (lane == 0) pend = atomicAdd(sh.ctr, STEAL_GRAIN << 16);
        cf |= STEAL_PENDING;
    }
}

// Until block b has its descriptor or the claims are exhausted (the ring is about to issue it, or consume it).
template <int VG>
__device__ __forceinline__ void steal_ensure(const StealShared& sh, uint4* bdesc, int warp, int& avail, int& cf, int& pend, int b,
    int tokens, unsigned ring, unsigned slot)
{
    while (avail <= b && (cf & (0xff | STEAL_PENDING) || !(cf & STEAL_DONE))) steal_step<VG>(sh, bdesc, warp, avail, cf, pend, true, tokens, ring, slot);
}

// Grid blocks of the pipelined kernel are units of a layer's (row, KV head) pairs: the launch's U = gridDim.x · gridDim.y ·
// gridDim.z units serve every row (the planner: one wave of resident blocks, gridDim.x, or gridDim.y waves of them where
// the descriptors' room needs more), so a batch's rows of unequal lengths (KVzip per sequence) share the wave instead of
// each row splitting its own fixed part of it. The kernel picks one chunk per layer from the pairs' block counts (every
// warp alike, after pdl_wait): with several rows, the smallest c with Σ_pairs max(1, ceil(blocks / c)) <= U, found by
// bisection between ceil(Σ blocks / U) and the smaller of two chunks that always fit, ceil(Σ blocks / (U − pairs)) (each
// pair's partial split wastes less than a unit) and ceil(longest / (U / pairs)), with one row that smaller bound itself;
// at least ceil(longest / splits) (`splits`: the partial results' stride per head) and at most chunk_blocks (the
// descriptors' room; the planner keeps the choice within it).
// With several waves the target is the fewest whole waves that chunk_blocks allows (a chunk filling every unit of three
// waves where two sufficed cost 8% at 8 × 128K). Live units come first in launch order, pairs row by row.
struct WaveSplit
{
    int t, kvh, split, live, chunk, blocks, limit; // blocks: the head's block count; limit: the stored tokens row t sees
};

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Pair i's index in the tables: row t's own heads in a batch, else the shared heads.
__device__ __forceinline__ int wave_table(int i, int kv_heads, int batch) { return batch ? i : i % kv_heads; }

// Units the pairs take with chunk c, summed over the warp (every lane gets it). Pairs lane and lane + 32 come from the
// lanes' registers (rows · KV heads <= 64: batch 8 of 8 KV heads), more from L1.
__device__ __forceinline__ int wave_units(const int (&mb)[2], const int* head_blocks, int pairs, int kv_heads, int batch, int c)
{
    const int lane = threadIdx.x & 31;
    int n = 0;
#pragma unroll
    for (int k = 0; k < 2; k++)
        if (lane + 32 * k < pairs) n += max(1, ceil_div(mb[k], c));
    for (int i = lane + 64; i < pairs; i += 32) n += max(1, ceil_div(head_blocks[wave_table(i, kv_heads, batch)], c));
    return __reduce_add_sync(0xffffffffu, n);
}

// This grid block's row, head and split (kvh < 0: a unit past the layer's work); warp-uniform.
__device__ __forceinline__ WaveSplit wave_split(const int* head_blocks, const int* head_tokens, int kv_heads, int rows, int batch,
    int chunk_blocks, int splits)
{
    const int lane = threadIdx.x & 31, units = (int)(gridDim.x * gridDim.y * gridDim.z);
    const int p = (int)((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x), pairs = rows * kv_heads;
    // Pairs lane and lane + 32 stay in the lanes' registers, block and token counts loaded in one round trip (no load
    // waits for the pair's choice).
    int mb[2], mt[2], total = 0, longest = 0;
#pragma unroll
    for (int k = 0; k < 2; k++)
    {
        const bool in = lane + 32 * k < pairs;
        const int at = wave_table(lane + 32 * k, kv_heads, batch);
        mb[k] = in ? head_blocks[at] : 0;
        mt[k] = in ? head_tokens[at] : 0;
    }
#pragma unroll
    for (int k = 0; k < 2; k++) { total += mb[k]; longest = max(longest, mb[k]); }
    for (int i = lane + 64; i < pairs; i += 32)
    {
        const int b = head_blocks[wave_table(i, kv_heads, batch)];
        total += b;
        longest = max(longest, b);
    }
    total = __reduce_add_sync(0xffffffffu, total);
    longest = __reduce_max_sync(0xffffffffu, longest);
    const int per_pair = units / pairs, least = max(ceil_div(longest, splits), 1);
    int hi = per_pair > 0 ? ceil_div(longest, per_pair) : longest;
    if (units > pairs) hi = min(hi, ceil_div(total, units - pairs));
    hi = max(hi, least);
    int target = units;
    if (gridDim.y > 1) // several waves of gridDim.x units (8 × 128K tokens): as few as the descriptors' room allows, full
    {
        const int wave = (int)gridDim.x, fewest = wave_units(mb, head_blocks, pairs, kv_heads, batch, chunk_blocks);
        target = min(units, ceil_div(fewest, wave) * wave);
        hi = chunk_blocks;
    }
    // One row's heads keep the bound (the search's probes cost more than its balance gains there: KVzip 0.3 at 32K, batch
    // 1, 0.7% slower a step on an H100); a batch's rows and several waves search.
    int lo = pairs > kv_heads || gridDim.y > 1 ? max(ceil_div(total, target), least) : hi;
    while (lo < hi) // hi fits the target; the smallest c that fits is in [lo, hi]
    {
        const int mid = (lo + hi) >> 1;
        if (wave_units(mb, head_blocks, pairs, kv_heads, batch, mid) <= target) hi = mid;
        else lo = mid + 1;
    }
    const int c = min(hi, chunk_blocks);
    WaveSplit w = { 0, -1, 0, 0, c, 0, 0 };
    for (int g0 = 0, base = 0; g0 < pairs; g0 += 32)
    {
        const int i = g0 + lane, b = i >= pairs ? 0 : g0 == 0 ? mb[0] : g0 == 32 ? mb[1] : head_blocks[wave_table(i, kv_heads, batch)];
        const int n = i < pairs ? max(1, ceil_div(b, c)) : 0;
        int incl = n;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1)
        {
            const int y = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += y;
        }
        const unsigned mine = __ballot_sync(0xffffffffu, n > 0 && p >= base + incl - n && p < base + incl);
        if (mine)
        {
            const int src = __ffs(mine) - 1, pair = g0 + src;
            w.t = pair / kv_heads;
            w.kvh = pair % kv_heads;
            w.split = p - base - __shfl_sync(0xffffffffu, incl - n, src);
            w.live = __shfl_sync(0xffffffffu, n, src);
            w.blocks = __shfl_sync(0xffffffffu, b, src);
            const int tokens = g0 == 0 ? __shfl_sync(0xffffffffu, mt[0], src) : g0 == 32 ? __shfl_sync(0xffffffffu, mt[1], src)
                : head_tokens[wave_table(pair, kv_heads, batch)];
            w.limit = row_visible(tokens, rows, w.t, batch);
            return w;
        }
        base += __shfl_sync(0xffffffffu, incl, 31);
    }
    return w;
}

// A hi column's accumulator plus its lo column's (G <= 4: column c + G; G = 8 summed both in one column): G = 1 holds
// them in the lane's two registers e, G = 2 and 4 in the lane tig ^ 1 or tig ^ 2. Warp-uniform.
template <int G>
__device__ __forceinline__ float column_sum(float x, float other_e)
{
    if constexpr (G == 1) return x + other_e;
    else if constexpr (G == 2) return x + __shfl_xor_sync(0xffffffffu, x, 1);
    else if constexpr (G == 4) return x + __shfl_xor_sync(0xffffffffu, x, 2);
    else return x;
}

// The warp's accumulators into its slice [G, HD] of the block's output (pipe's `slices`: plain stores, each element once;
// the 4 slices are summed after a barrier), scaled by f (this lane's
// head gid mod G: e^(m - the block's max)) with the min terms md (pipe_min_terms: chunk k's sums in row k, held by the
// lanes gid = k): a hi column's value plus its lo column's (G <= 4) for the lane's channels 32k + 4·gid + [0, 4), the
// accumulators in the units of format `units` (value_exp). Warp-uniform.
template <int G>
__device__ __forceinline__ void pipe_add_output(const float (&o)[8][4], const float (&md)[4], float f, int units, int gid, int tig, float* slice)
{
    constexpr int HD = 128;
    float fc[2], mc[4][2], ms[2], u[4];
#pragma unroll
    for (int i = 0; i < 4; i++) u[i] = pow2i(value_exp(units, i));
    column_values<G>(f, tig, fc);
#pragma unroll
    for (int e = 0; e < 2; e++) ms[e] = column_sum<G>(md[e], md[e ^ 1]);
#pragma unroll
    for (int k = 0; k < 4; k++)
#pragma unroll
        for (int e = 0; e < 2; e++) mc[k][e] = __shfl_sync(0xffffffffu, ms[e], 4 * k + tig);
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int r = 0; r < 4; r++)
        {
            const float x = column_sum<G>(o[j][r], o[j][r ^ 1]);
            const int e = r & 1, c = 2 * tig + e, k = j >> 1;
            if (column_hi<G>(c) && (G != 1 || e == 0))
                slice[column_head<G>(c) * HD + 32 * k + 4 * gid + 2 * (j & 1) + (r >> 1)] = fc[e] * (x * u[2 * (j & 1) + (r >> 1)] + mc[k][e]);
        }
}

// pipe_add_output in PIPE_T's layout: the lane's columns 2·tig, 2·tig + 1 are head tig's hi and lo parts (its two
// registers e = 0, 1: no shuffles), f is that head's factor; for G < 4 the lanes tig >= G repeat heads and write nothing.
template <int G>
__device__ __forceinline__ void pipe_add_output_t(const float (&o)[8][4], const float (&md)[4], float f, int units, int gid, int tig, float* slice)
{
    constexpr int HD = 128;
    float mc[4], u[4];
#pragma unroll
    for (int i = 0; i < 4; i++) u[i] = pow2i(value_exp(units, i));
    const float ms = md[0] + md[1];
#pragma unroll
    for (int k = 0; k < 4; k++) mc[k] = __shfl_sync(0xffffffffu, ms, 4 * k + tig);
    if (tig >= G) return;
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int r = 0; r < 4; r += 2)
        {
            const int k = j >> 1, i = 2 * (j & 1) + (r >> 1);
            slice[tig * HD + 32 * k + 4 * pipe_value_quad(gid) + i] = f * ((o[j][r] + o[j][r + 1]) * u[i] + mc[k]);
        }
}

// Pair or side entries (issue_entry) for a build of only the formats of PIPE_FORMATS: 1 where every block format but the
// float32 residual takes pairs (FP8 blocks, 4 KB, in 16 KB rings; ≤ 2-bit ones, 1.5 KB, in 8 KB rings; the residual's pieces
// are a quarter of a ring), 0 where every one takes side entries (F16, BF16, INT8 of 4-8 KB in 16 KB rings; INT4, 2.5 KB, in
// 8 KB rings), else -1: the grid block decides from its slot size (the generic build, mixed caches). A fixed mode leaves
// the other mode's code out of the block loop: with both, the INT2 build's G = 8 kernel spilled 288 bytes instead of 100.
// Either mode is correct for any slot size (a pair of slots fits any ring: a slot is at most half of it), so a build's
// fixed mode only decides how deep its copies run.
#define PIPE_PAIR_FORMATS ((1 << KV_FP8) | (1 << KV_INT2) | (1 << KV_TERNARY) | (1 << KV_BINARY))
constexpr int PIPE_PAIRS = ((PIPE_FORMATS) & ~1) == 0 ? -1
    : ((PIPE_FORMATS) & ~1 & ~PIPE_PAIR_FORMATS) == 0 ? 1
    : ((PIPE_FORMATS) & PIPE_PAIR_FORMATS) == 0 ? 0 : -1;

template <int G, int VG, bool STEAL>
__device__ __forceinline__ void paged_attention_pipe(
    const float* __restrict__ q, const u8* __restrict__ pool, const uint4* __restrict__ desc, const int* __restrict__ head_blocks,
    const int* __restrict__ head_tokens, float* part_out, float* part_ml, int* counters, float* __restrict__ out,
    int heads, int kv_heads, int max_blocks, int tokens, int rows, int chunk_blocks, int splits, float scale, int batch, unsigned ring,
    int merge_grid, int tables_early)
{
    constexpr int HD = 128, vg = VG;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    // 128-byte aligned rings (paged_attention_tc's declaration of the same array says the same): the dynamic part
    // starts after the static __shared__ words, and with 16 more of them (wslot) the rings began at 16 mod 32 bytes; on
    // an H100 that build was ~4% slower a step on F16 blocks (8 x 32K) and 3-4% on INT4 ones at the same copy schedule;
    // aligned, it was faster than main on every row timed (F16 paged, KIVI-2, KIVI-4; docs/benchmarks.md, gpuslots).
    extern __shared__ __align__(128) float4 smem4[];
    u8* rings = reinterpret_cast<u8*>(smem4);                                                   // [PIPE_WARPS][ring]
    unsigned long long* bars = reinterpret_cast<unsigned long long*>(rings + PIPE_WARPS * ring); // [PIPE_WARPS][PIPE_BARS]
    unsigned* qs = reinterpret_cast<unsigned*>(bars + PIPE_WARPS * PIPE_BARS);                  // [G][PIPE_QROW] q·scale·log2 e, hi/lo (pipe_q)
    float* wml = reinterpret_cast<float*>(qs + G * PIPE_QROW);                                   // [PIPE_WARPS][G] (max, sum)
    uint4* bdesc = reinterpret_cast<uint4*>(wml + 2 * PIPE_WARPS * G);                           // [chunk_blocks]
    const unsigned bar0 = smem_u32(bars + warp * PIPE_BARS), ring0 = smem_u32(rings + warp * ring);
    // Shared memory only, before waiting for the kernel before (under programmatic launch it may still be running).
    if (lane == 0)
    {
#pragma unroll
        for (int b = 0; b < PIPE_BARS; b++) mbar_init(bar0 + 8 * b);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    // tables_early (a batch step whose append is folded into the QKV product before, CudaPagedKernels.EarlyBatchTables):
    // that kernel writes only the queries, the residuals' rows, each head's token count and its last block's (the
    // residual's) descriptor count, so the split and the descriptors of its blocks are read before the wait, during the
    // product's tail, and the token count and the last descriptor again after it (with the queries: one round trip).
    const bool early = !STEAL && tables_early != 0;
    if (!early) pdl_wait(); // the tables, the appended token and the queries come from the kernel before
    const WaveSplit ws = wave_split(head_blocks, head_tokens, kv_heads, rows, batch, chunk_blocks, splits);
    if (ws.kvh < 0) return; // past the layer's work: nothing to read or write
    const int t = ws.t, kvh = ws.kvh;
    // STEAL: the unit's own run is the head's last block, in its last split; the others are claimed.
    const int b0 = STEAL ? max(ws.blocks - 1, 0) : ws.split * ws.chunk;
    const int nb = STEAL ? (ws.split == ws.live - 1 && ws.blocks > 0 ? 1 : 0) : min(ws.chunk, ws.blocks - b0);
    const uint4* hdesc = desc + (long)((batch ? t * kv_heads : 0) + kvh) * max_blocks + b0;
    const long first = ((long)t * heads + (long)kvh * G) * splits + ws.split;
    // The split's descriptors (at most two a thread: the planner keeps chunk_blocks <= 2 * 128,
    // CudaPagedKernels.PipelinedMaxChunkBlocks), issued with the G query loads of a thread where the wait came first: one
    // round trip for both, where the descriptors' loads waited for the queries' stores.
    uint4 dl[2];
#pragma unroll
    for (int k = 0; k < 2; k++)
        if (threadIdx.x + k * PIPE_WARPS * 32 < nb) dl[k] = hdesc[threadIdx.x + k * PIPE_WARPS * 32];
    int limit = ws.limit;
    if (early)
    {
        pdl_wait(); // the queries, the appended token's count and its descriptor
        // From L2: the reads before the wait may have left the old values in this SM's L1.
        limit = row_visible(__ldcg(head_tokens + wave_table(t * kv_heads + kvh, kv_heads, batch)), rows, t, batch);
        const int last = nb - 1; // the head's last block: its residual, whose count the append advanced
        if (nb > 0 && b0 + nb == ws.blocks && (int)threadIdx.x == last % (PIPE_WARPS * 32))
        {
            if (last < PIPE_WARPS * 32) dl[0] = __ldcg(hdesc + last);
            else dl[1] = __ldcg(hdesc + last);
        }
    }
    // The merge counts and reads the head's `live` splits of row t. Kept in shared memory until the merge: a register live
    // across the block loop (128 at most) is not free.
    __shared__ int live_splits, merge_row, merge_kvh, merge_split;
    if (threadIdx.x == 0) { live_splits = ws.live; merge_row = t; merge_kvh = kvh; merge_split = ws.split; }
    // The head's last split marks the slot after it empty: part_ml's readers outside attention (part_ml_lse) stop there
    // instead of reading slots an earlier launch left.
    if (ws.split == ws.live - 1 && ws.live < splits) empty_chunk(part_ml, first + 1, splits, G);
    float qx[G];
#pragma unroll
    for (int k = 0; k < G; k++) qx[k] = q[((long)t * heads + (long)kvh * G) * HD + threadIdx.x + k * PIPE_WARPS * 32];
#pragma unroll
    for (int k = 0; k < G; k++)
    {
        const int i = threadIdx.x + k * PIPE_WARPS * 32; // the launch has PIPE_WARPS warps
        const float x = qx[k] * (scale * 1.4426950408889634f);
        const float h = __uint_as_float(__float_as_uint(x) & 0xffffe000u); // 11 significant bits, as split_f16x2
#if PIPE_T
        u16* const q16 = reinterpret_cast<u16*>(qs);
        q16[2 * pipe_qt(i / HD, 0, i % HD & ~1) + (i & 1)] = f32_to_f16(h);
        q16[2 * pipe_qt(i / HD, 1, i % HD & ~1) + (i & 1)] = f32_to_f16(x - h);
#else
        u16* at = reinterpret_cast<u16*>(qs + pipe_q(i / HD, i % HD & ~1)) + (i & 1);
        at[0] = f32_to_f16(h);
        at[2] = f32_to_f16(x - h);
#endif
    }
#if PIPE_T
    if (threadIdx.x < 16) qs[pipe_qt_zero<G>() + threadIdx.x] = 0u; // the hi columns' z (pipe_query_t)
#endif
    // The split's descriptors; its last block may become several (pipe_float_pieces): `staged` entries in all. The slot
    // size is the largest entry of the split (every warp's max, through wslot).
    __shared__ int staged_blocks;
    __shared__ unsigned wslot[PIPE_WARPS];
    if (threadIdx.x == 0 && nb <= 0) staged_blocks = 0;
    unsigned big = 0u;
#pragma unroll 1
    for (int i = threadIdx.x; i < nb; i += PIPE_WARPS * 32)
    {
        const uint4 d = pipe_desc(i == (int)threadIdx.x ? dl[0] : dl[1], limit, tokens, vg, ring); // one copy of the body
        if (i < nb - 1)
        {
            bdesc[i] = d;
            big = max(big, max(d.w & 0xffffu, d.w >> 16));
        }
        else
        {
            unsigned pb;
            staged_blocks = nb - 1 + pipe_float_pieces(d, ring, bdesc + i, &pb);
            big = max(big, pb);
        }
    }
    big = __reduce_max_sync(0xffffffffu, big);
    if (lane == 0) wslot[warp] = big;
    __syncthreads();
    const int nbs = staged_blocks;
    // slot: bytes of a slot (a multiple of 16, at most half the ring); ns: slots a warp uses; pair: pair entries (issue_entry);
    // nbar: barriers in rotation (an entry each); nbw: the warp's blocks; ne: its entries.
    unsigned slot = max(max(wslot[0], wslot[1]), max(wslot[2], wslot[3]));
    if (STEAL) slot = max(slot, steal_slot(tokens, vg, ring));
    const int ns = slot ? min((int)(ring / slot), PIPE_BARS) : PIPE_BARS;
    const bool pair = PIPE_PAIRS >= 0 ? PIPE_PAIRS == 1 : ns >= 4;
    const int nbar = pair ? ns / 2 : ns, nbw = warp < nbs ? (nbs - 1 - warp) / PIPE_WARPS + 1 : 0, ne = pair ? nbw : 2 * nbw;
    // In the descriptors' room (a static __shared__ would move every build's rings).
    StealShared& steal_sh = *reinterpret_cast<StealShared*>(bdesc + STEAL_ROOM - 2);
    int avail = 0, cf = 0, pend = 0;
    if (STEAL)
    {
        // The warp's pieces of the last block first (0-2), then its first claim, waited for.
        uint4* const wq = steal_ring(bdesc, warp);
        const uint4* const hd = desc + (long)((batch ? t * kv_heads : 0) + kvh) * max_blocks;
        int* const ctr = counters + (long)t * kv_heads + kvh;
        if (threadIdx.x == 0) steal_sh = { hd, ctr, ws.blocks - 1, limit };
        if (lane < nbw) wq[lane] = bdesc[warp + PIPE_WARPS * lane];
        int base = 0;
        if (lane == 0) base = atomicAdd(ctr, STEAL_FIRST << 16) >> 16;
        base = __shfl_sync(0xffffffffu, base, 0);
        const int cnt = max(0, min(STEAL_FIRST, ws.blocks - 1 - base));
        if (lane < cnt) wq[(nbw + lane) % STEAL_QN] = steal_desc(hd[base + lane], limit, tokens, vg, ring, slot);
        __syncwarp();
        avail = nbw + cnt;
        cf = base + STEAL_FIRST >= ws.blocks - 1 ? STEAL_DONE : 0;
        if (lane == 0)
            for (int e = 0; e < nbar && (pair ? e : e >> 1) < avail; e++)
                issue_desc(e, (unsigned)e, pair, wq[(pair ? e : e >> 1) % STEAL_QN], pool, ring0, slot, bar0);
        __syncthreads(); // steal_sh
    }
    else if (lane == 0)
        for (int e = 0; e < min(nbar, ne); e++) issue_entry(e, (unsigned)e, pair, bdesc, warp, pool, ring0, slot, bar0);
    // The block a warp's issue needs ahead of the one it consumes (side entries: the values' entry nbar on), and where a
    // claim goes out (its blocks then land two blocks later, before the ring needs them).
    const int ahead = pair ? nbar : (nbar + 1) >> 1;
    // o: the transposed P·V's accumulators (column_hi), in the units of format `units` (value_exp); md: the value mins'
    // sums (pipe_min_terms), the same columns.
    float o[8][4], md[4] = { 0.0f, 0.0f, 0.0f, 0.0f }, m = neg_inf(), l = 0.0f;
    int units = KV_F32;
#pragma unroll
    for (int j = 0; j < 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    // k: the barrier of the warp's next entry (entry e's: e % nbar, kept as a counter), ph: its phase's parity.
    unsigned k = 0u, ph = 0u;
    for (int j = 0; STEAL || j < nbw; j++)
    {
        if (STEAL)
        {
            // The descriptors of this block and of every block whose entry it issues (at most `ahead` on): the issues below
            // need no check of their own, where three inlined copies of the claims' steps cost registers and code.
            steal_ensure<VG>(steal_sh, bdesc, warp, avail, cf, pend, j + ahead, tokens, ring, slot);
            if (j >= avail) break;
            steal_step<VG>(steal_sh, bdesc, warp, avail, cf, pend, avail + (cf & 0xff) - j <= ahead + STEAL_GRAIN, tokens, ring, slot);
        }
        const int e = pair ? j : 2 * j; // the block's first entry
        const uint4 d = STEAL ? steal_ring(bdesc, warp)[j % STEAL_QN] : bdesc[warp + PIPE_WARPS * j]; // pipe_desc
        const int n = desc_count(d);
        const unsigned ks = d.w & 0xffffu, vs = d.w >> 16;
        // kb, vb: the barriers of the block's keys and values (a pair's one barrier); kk, vk: their slots.
        const unsigned kb = k, kph = ph;
        if (++k == (unsigned)nbar) { k = 0u; ph ^= 1u; }
        unsigned vb = kb, vph = kph;
        if (!pair)
        {
            vb = k;
            vph = ph;
            if (++k == (unsigned)nbar) { k = 0u; ph ^= 1u; }
        }
        const unsigned kk = pair ? 2 * kb : kb, vk = pair ? kk + 1 : vb;
#if PIPE_T
        float s[2][2], ku = 1.0f; // the scores' unit (pipe_scores_t)
#else
        float s[4][2], ku = 1.0f; // the scores' unit (pipe_scores)
#endif
        if (n)
        {
            // F32/BF16 blocks are read through generic pointers: into the ring when staged, else in place.
            const u8* kp = ks ? rings + warp * ring + kk * slot : pool + (size_t)d.x * 16;
            const SharedSrc ksrc = { ring0 + kk * slot };
            // A pair waits once, for both (its values may be staged where its keys are not: a long F32 block's keys).
            if (pair ? ks + vs != 0 : ks != 0) mbar_wait(bar0 + 8 * kb, kph);
            // Full blocks (most) take copies with n a constant (and the block's token count: n = 32 is a full block of the
            // largest size): no per-tile bounds or row clamps, constant offsets of the parameters.
#if PIPE_T
#define PSCORES(F) \
    ku = key_unit<F, true>(); \
    if (n == 32) pipe_scores_t<G, F>(ksrc, 32, 32, qs, s, gid, tig); \
    else pipe_scores_t<G, F>(ksrc, n, tokens, qs, s, gid, tig)
#define PSCORES_FLOAT(F) pipe_scores_float_t<G, F>(kp, n, qs, s, gid, tig)
#else
#define PSCORES(F) \
    ku = key_unit<F, true>(); \
    if (n == 32) pipe_scores<G, F>(ksrc, 32, 32, qs, s, gid, tig); \
    else pipe_scores<G, F>(ksrc, n, tokens, qs, s, gid, tig)
#define PSCORES_FLOAT(F) pipe_scores_float<G, F>(kp, n, qs, s, gid, tig)
#endif
            KV_FLOAT_OR(desc_kfmt(d), PSCORES_FLOAT, PSCORES)
#undef PSCORES
#undef PSCORES_FLOAT
        }
        if (!pair)
        {
            // The keys are done (their values were used before the __syncwarp): their slot takes entry e + nbar.
            __syncwarp();
            if (STEAL)
            {
                const int bn = (e + nbar) >> 1;
                if (lane == 0 && bn < avail) issue_desc(e + nbar, kb, false, steal_ring(bdesc, warp)[bn % STEAL_QN], pool, ring0, slot, bar0);
            }
            else if (lane == 0 && e + nbar < ne) issue_entry(e + nbar, kb, false, bdesc, warp, pool, ring0, slot, bar0);
        }
        if (n)
        {
            const int vf = desc_vfmt(d);
            const u8* vp = vs ? rings + warp * ring + vk * slot : pool + (size_t)d.y * 16;
            const SharedSrc vsrc = { ring0 + vk * slot };
#if PIPE_T
            pipe_softmax_t(s, ku, m, l, o, md);
#else
            pipe_softmax<G>(s, ku, m, l, o, md, tig);
#endif
            const int vu = kv_quantized(vf) ? (vf == KV_TERNARY ? KV_INT2 : vf) : KV_F32; // formats of equal value_exp share units
            if (vu != units)
            {
                value_units(o, units, vu);
                units = vu;
            }
            if (!pair && vs) mbar_wait(bar0 + 8 * vb, vph);
#if PIPE_T
#define PVALUES(F) \
    if (n == 32) pipe_values_t<G, F, VG, true>(vsrc, 32, 32, s, gid, tig, o, md); \
    else pipe_values_t<G, F, VG, false>(vsrc, n, tokens, s, gid, tig, o, md)
#define PVALUES_FLOAT(F) pipe_values_float_t<G, F>(vp, n, s, gid, tig, o)
#else
#define PVALUES(F) \
    if (n == 32) pipe_values<G, F, VG, true>(vsrc, 32, 32, s, gid, tig, o, md); \
    else pipe_values<G, F, VG, false>(vsrc, n, tokens, s, gid, tig, o, md)
#define PVALUES_FLOAT(F) pipe_values_float<G, F>(vp, n, s, gid, tig, o)
#endif
            KV_FLOAT_OR(vf, PVALUES_FLOAT, PVALUES)
#undef PVALUES
#undef PVALUES_FLOAT
        }
        // The values (a pair's block) are done: their slot (a pair's two) takes the entry nbar after theirs.
        __syncwarp();
        const int ev = pair ? e : e + 1;
        if (STEAL)
        {
            const int bn = pair ? ev + nbar : (ev + nbar) >> 1;
            if (lane == 0 && bn < avail) issue_desc(ev + nbar, vb, pair, steal_ring(bdesc, warp)[bn % STEAL_QN], pool, ring0, slot, bar0);
        }
        else if (lane == 0 && ev + nbar < ne) issue_entry(ev + nbar, vb, pair, bdesc, warp, pool, ring0, slot, bar0);
    }

    pdl_trigger(); // the output product's blocks may start loading weights during the merges
    // The block's 4 warps merge: per head M = max of the warps' maxima, each warp's accumulators weighted by e^(m - M).
#if PIPE_T
    // A head's sum is over the 8 lanes of its tig (pipe_softmax_t), held by lane gid = 0 of it.
    l += __shfl_xor_sync(0xffffffffu, l, 4);
    l += __shfl_xor_sync(0xffffffffu, l, 8);
    l += __shfl_xor_sync(0xffffffffu, l, 16);
    const int head = tig, holder = gid;
#else
    // A head's sum is over the 4 lanes of its gid, held by lane tig = 0 of it.
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int head = gid, holder = tig;
#endif
    if (holder == 0 && head < G) { wml[2 * (warp * G + head)] = m; wml[2 * (warp * G + head) + 1] = l; }
    __syncthreads();
    // Each warp's weighted accumulators go to its own slice of the rings (every entry was consumed before the barrier
    // above), summed below: 4 warps adding into one [G, HD] array took shared-memory atomics, a compare-and-swap loop a
    // float on sm_90, ~4-5 us of the block's end at batch 1 (H100, docs/benchmarks.md "The pipelined kernel's end").
    float* const slices = reinterpret_cast<float*>(rings); // [PIPE_WARPS][G, HD]
    float* const slice = slices + warp * G * HD;
    if (!__any_sync(0xffffffffu, l > 0.0f)) // every lane or none: a warp's heads see the same tokens
        for (int i = lane; i < G * HD; i += 32) slice[i] = 0.0f;
    else
    {
        const int g = head & (G - 1);
        float mx = neg_inf();
#pragma unroll
        for (int w = 0; w < PIPE_WARPS; w++)
            if (wml[2 * (w * G + g) + 1] > 0.0f) mx = fmaxf(mx, wml[2 * (w * G + g)]);
        const float weight = l > 0.0f ? fast_exp2(m - mx) : 0.0f;
#if PIPE_T
        pipe_add_output_t<G>(o, md, weight, units, gid, tig, slice);
#else
        pipe_add_output<G>(o, md, weight, units, gid, tig, slice);
#endif
    }
    const int mkvh = merge_kvh;
    const long mfirst = ((long)merge_row * heads + (long)mkvh * G) * splits + merge_split;
    if (threadIdx.x < G)
    {
        const int g = threadIdx.x;
        float mx = neg_inf(), sum = 0.0f;
#pragma unroll
        for (int w = 0; w < PIPE_WARPS; w++)
            if (wml[2 * (w * G + g) + 1] > 0.0f) mx = fmaxf(mx, wml[2 * (w * G + g)]);
#pragma unroll
        for (int w = 0; w < PIPE_WARPS; w++)
            if (wml[2 * (w * G + g) + 1] > 0.0f) sum += wml[2 * (w * G + g) + 1] * fast_exp2(wml[2 * (w * G + g)] - mx);
        // Natural-log max for the merge (it weighs chunks by e^(m_s - M)).
        part_ml[(mfirst + (long)g * splits) * 2] = sum > 0.0f ? mx * 0.6931471805599453f : neg_inf();
        part_ml[(mfirst + (long)g * splits) * 2 + 1] = sum;
    }
    __syncthreads();
    // The split's partial output: the warps' slices summed (16-byte items; a head's HD floats are one row of part_out).
    for (int i = threadIdx.x; i < G * HD / 4; i += blockDim.x)
    {
        const float4* x = reinterpret_cast<const float4*>(slices) + i;
        const float4 a = x[0], b = x[G * HD / 4], c = x[2 * G * HD / 4], d = x[3 * G * HD / 4];
        reinterpret_cast<float4*>(part_out + (mfirst + (long)(i / (HD / 4)) * splits) * HD)[i % (HD / 4)] =
            make_float4(a.x + b.x + c.x + d.x, a.y + b.y + c.y + d.y, a.z + b.z + c.z + d.z, a.w + b.w + c.w + d.w);
    }
    // With merge_grid the heads are merged by paged_merge_heads (paged_merge.cu), launched after this grid: split 0
    // leaves the head's live split count in its counter for it.
    if (merge_grid)
    {
        if (threadIdx.x == 0 && merge_split == 0) counters[(long)merge_row * kv_heads + mkvh] = live_splits;
        return;
    }
    // Chunk weights go to the rings (the slices were read before the merge's first barrier; the planner keeps G·splits
    // floats within them).
    merge_splits_early<G, HD, G == 8 ? 8 : 12, false>(part_out, part_ml, counters, out, reinterpret_cast<float*>(rings), splits, splits, heads,
        kv_heads, merge_row, mkvh, live_splits, PIPE_STEAL_BUILD != 0);
}

// At most 128 registers in the generic build: 4 blocks per SM with 8 KB rings (~41 KB of shared memory each); 16 KB rings
// (~73 KB) fit 3. One kernel per group and value group; ring: bytes of each warp's ring (8192 or 16384,
// CudaPagedKernels.PlanPipelined); pfa/pfn_a, pfb/pfn_b: device memory the next kernels read, asked of L2 before the wait
// (prefetch_l2; 0 bytes: none).
#define PAGED_ATTN_PIPE(G, VG) \
    extern "C" __global__ void __launch_bounds__(128, PIPE_MIN_BLOCKS) paged_attn_p_g##G##_v##VG(const float* q, const u8* pool, const uint4* desc, \
        const int* head_blocks, const int* head_tokens, float* po, float* pml, int* counters, float* out, int heads, int kv_heads, \
        int max_blocks, int tokens, int rows, int chunk_blocks, int splits, float scale, int batch, int ring, const void* pfa, long pfn_a, \
        const void* pfb, long pfn_b, int merge_grid, int tables_early) \
    { \
        prefetch_l2(pfa, pfn_a, pfb, pfn_b); \
        paged_attention_pipe<G, VG, PIPE_STEAL_BUILD == 1>(q, pool, desc, head_blocks, head_tokens, po, pml, counters, out, heads, kv_heads, \
            max_blocks, tokens, rows, chunk_blocks, splits, scale, batch, (unsigned)ring, PIPE_STEAL_BUILD ? 0 : merge_grid, tables_early); \
    }
#define PAGED_ATTN_PIPE_OF(G, VG) PAGED_ATTN_PIPE(G, VG)
#ifdef PIPE_ONLY
PAGED_ATTN_PIPE_OF(PIPE_G, PIPE_VG)
#else
PAGED_ATTN_PIPE(1, 32) PAGED_ATTN_PIPE(2, 32) PAGED_ATTN_PIPE(4, 32) PAGED_ATTN_PIPE(8, 32)
PAGED_ATTN_PIPE(1, 64) PAGED_ATTN_PIPE(2, 64) PAGED_ATTN_PIPE(4, 64) PAGED_ATTN_PIPE(8, 64)
PAGED_ATTN_PIPE(1, 128) PAGED_ATTN_PIPE(2, 128) PAGED_ATTN_PIPE(4, 128) PAGED_ATTN_PIPE(8, 128)
#endif
