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

// Whether bit i of a mask is set, and how many bits below i are (the slot of channel/token i among the set ones).
__device__ __forceinline__ bool vid_mask_bit(const u8* mask, int i) { return ((mask[i >> 3] >> (i & 7)) & 1) != 0; }
__device__ __forceinline__ int vid_mask_rank(const u8* mask, int i)
{
    int r = 0;
    for (int b = 0; b < (i >> 3); b++) r += __popc((unsigned)mask[b]);
    return r + __popc((unsigned)mask[i >> 3] & ((1u << (i & 7)) - 1u));
}

// The `width`-bit code at bit `bit` of an area (codes of 1 or 2 bits never straddle a byte).
__device__ __forceinline__ int vid_code(const u8* area, int bit, int width) { return (area[bit >> 3] >> (bit & 7)) & ((1 << width) - 1); }

// Ternary digit of element e of a trit area: -1, 0 or +1.
__device__ __forceinline__ int vid_trit(const u8* trits, int e)
{
    const int d = e % 5, pow3 = d == 0 ? 1 : d == 1 ? 3 : d == 2 ? 9 : d == 3 ? 27 : 81;
    return ((int)trits[e / 5] / pow3) % 3 - 1;
}

// Start of the basis of length n in the concatenated tables (lengths 1, 2, ...: Σ_{i<n} i² floats before it); row j is
// φ_j(0..n-1).
__device__ __forceinline__ int vid_basis_at(int n) { return (n - 1) * n * (2 * n - 1) / 6; }
