// VidKV blocks (KvSharp.Cache.Blocks.VidKvLayout / VidKvCodec) as the device reads them: byte offsets of their areas,
// their f16 parameters (byte-packed: an area may start at an odd byte) and the mask ranks that map a channel (keys) or a
// token (values) to its slot among the stored parameters.
//
// Keys (kf = KV_VIDKV_KEY, T layout tokens, hd channels, m outlier channels; n = the block's stored tokens):
//   channel mask hd bits | outlier codes T·m 2-bit (token t, k-th outlier at element t·m + k) |
//   sign bits T·(hd - m) (coefficient j of the k-th normal channel at element j·(hd - m) + k) |
//   f16: m outlier steps, m outlier mins, hd - m normal scales, hd - m normal means.
//   Outlier channel: x = min + step·code. Normal channel: x_t = mean + scale·Σ_{j=1}^{n-1} φ_j(t)·s_j (the real DFT basis
//   of length n, RealFourierBasis, uploaded by the host as float32 tables concatenated by length: vid_basis_at).
// Values (vf = KV_VIDKV_VALUE, S salient tokens): token mask ⌈T/8⌉ bytes | trits ⌈T·hd/5⌉ bytes (element e = t·hd + c is
//   base-3 digit e % 5, trit + 1, of byte e / 5) | S Int4 rows of hd/2 bytes, slot i for the i-th salient token |
//   f16: hd channel scales, S row steps, S row mins. Ordinary token: x = trit·scale_c; salient: x = min + step·code.
#pragma once
#include "paged_kv.cuh"

// f16 parameter i of an area starting at any byte.
__device__ __forceinline__ float vid_param(const u8* p, int i)
{
    return f16_to_f32((u16)((unsigned)p[2 * i] | ((unsigned)p[2 * i + 1] << 8)));
}

// Byte offsets of the areas (VidKvLayout.SecondCodeOffset / ParameterOffset); the first code area follows the mask.
__device__ __forceinline__ int vid_key_signs_at(int tokens, int hd, int m) { return hd / 8 + (2 * tokens * m + 7) / 8; }
__device__ __forceinline__ int vid_key_params_at(int tokens, int hd, int m) { return vid_key_signs_at(tokens, hd, m) + (tokens * (hd - m) + 7) / 8; }
__device__ __forceinline__ int vid_value_trits_at(int tokens) { return (tokens + 7) / 8; }
__device__ __forceinline__ int vid_value_rows_at(int tokens, int hd) { return vid_value_trits_at(tokens) + (tokens * hd + 4) / 5; }
__device__ __forceinline__ int vid_value_params_at(int tokens, int hd, int s) { return vid_value_rows_at(tokens, hd) + s * hd / 2; }

// Whether bit i of a mask is set.
__device__ __forceinline__ bool vid_mask_bit(const u8* mask, int i) { return ((mask[i >> 3] >> (i & 7)) & 1) != 0; }

// The 32 bits of an area starting at bit `bit` (byte loads: areas start at any byte; reads up to 5 bytes, which stay inside
// the block since a parameter area follows every code area).
__device__ __forceinline__ unsigned vid_bits32(const u8* area, int bit)
{
    const u8* b = area + (bit >> 3);
    const unsigned lo = (unsigned)b[0] | ((unsigned)b[1] << 8) | ((unsigned)b[2] << 16) | ((unsigned)b[3] << 24);
    const int sh = bit & 7;
    return sh == 0 ? lo : (lo >> sh) | ((unsigned)b[4] << (32 - sh));
}

// Ternary digit of element e of a trit area: -1, 0 or +1. Digit d of byte b is (b / 3^d) % 3; the divisions are
// multiplications by ceil(2^16 / divisor) (exact for b < 243: the excess stays below 1/81), without branches.
__device__ __forceinline__ int vid_trit(const u8* trits, int e)
{
    const int byte = e / 5, d = e - 5 * byte;
    const unsigned b = trits[byte];
    const unsigned magic = d == 0 ? 65536u : d == 1 ? 21846u : d == 2 ? 7282u : d == 3 ? 2428u : 810u;
    const unsigned q = (b * magic) >> 16;
    return (int)(q - 3u * ((q * 21846u) >> 16)) - 1;
}

// Start of the basis of length n in the concatenated tables (lengths 1, 2, ...: Σ_{i<n} i² floats before it); row j is
// φ_j(0..n-1).
__device__ __forceinline__ int vid_basis_at(int n) { return (n - 1) * n * (2 * n - 1) / 6; }
