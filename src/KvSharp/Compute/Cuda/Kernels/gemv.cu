// Matrix-vector products for decode: y[t, r] = sum_c w[r, c] * x[t, c] for NT <= 8 activation rows.
// Memory-bound: every weight byte is read once (16 bytes per lane per load, bypassing L1), each warp
// owns two output rows so every activation load from L1 serves two weight loads, and the unrolled
// loop keeps several loads in flight. Accumulation is float32.
//   MODE 0: y[t, r] = dot.
//   MODE 1: y[t, r] += dot (the residual add fused). The columns are split into ksplit parts, each its
//           own warp adding atomically, so long rows (the down projection) spread over enough warps to
//           balance the SMs.
//   MODE 2: SwiGLU over a [2 * rows, cols] matrix holding gate rows then up rows:
//           y[t, r] = silu(dot(gate_r)) * dot(up_r) (the feed-forward's first half in one pass).
#include "common.cuh"

template <class W, int NT, int MODE>
__device__ __forceinline__ void gemv(const typename W::T* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols, int ksplit)
{
    int warp = (int)((blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    int part = 0;
    if (MODE == 1) { part = warp % ksplit; warp /= ksplit; }
    int r0, r1;
    if (MODE == 2)
    {
        if (warp >= rows) return;
        r0 = warp;
        r1 = warp + rows;
    }
    else
    {
        r0 = 2 * warp;
        if (r0 >= rows) return;
        r1 = min(r0 + 1, rows - 1);
    }
    const typename W::T* w0 = w + (long)r0 * cols;
    const typename W::T* w1 = w + (long)r1 * cols;
    float a0[NT], a1[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) { a0[t] = 0.0f; a1[t] = 0.0f; }

    if (cols % W::Vec == 0)
    {
        // Rows start 16-byte aligned: cols is a multiple of the vector width and buffers are 256-byte aligned.
        const uint4* v0 = reinterpret_cast<const uint4*>(w0);
        const uint4* v1 = reinterpret_cast<const uint4*>(w1);
        const int nv = cols / W::Vec;
        const int per_part = (nv + ksplit - 1) / ksplit;
        const int end = min(nv, (part + 1) * per_part);
#pragma unroll 4
        for (int i = part * per_part + lane; i < end; i += 32)
        {
            float f0[W::Vec], f1[W::Vec];
            W::unpack(load_stream(v0 + i), f0);
            W::unpack(load_stream(v1 + i), f1);
#pragma unroll
            for (int t = 0; t < NT; t++)
            {
                const float4* xv = reinterpret_cast<const float4*>(x + (long)t * cols + (long)i * W::Vec);
#pragma unroll
                for (int q = 0; q < W::Vec / 4; q++)
                {
                    const float4 xx = __ldg(xv + q);
                    a0[t] += f0[4 * q] * xx.x + f0[4 * q + 1] * xx.y + f0[4 * q + 2] * xx.z + f0[4 * q + 3] * xx.w;
                    a1[t] += f1[4 * q] * xx.x + f1[4 * q + 1] * xx.y + f1[4 * q + 2] * xx.z + f1[4 * q + 3] * xx.w;
                }
            }
        }
    }
    else
    {
        const int per_part = (cols + ksplit - 1) / ksplit;
        const int end = min(cols, (part + 1) * per_part);
        for (int c = part * per_part + lane; c < end; c += 32)
        {
            const float f0 = W::get(w0, c), f1 = W::get(w1, c);
#pragma unroll
            for (int t = 0; t < NT; t++) { const float xx = x[(long)t * cols + c]; a0[t] += f0 * xx; a1[t] += f1 * xx; }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        const float s0 = warp_sum(a0[t]), s1 = warp_sum(a1[t]);
        if (lane != 0) continue;
        float* yt = y + (long)t * rows;
        if (MODE == 2) yt[r0] = s0 / (1.0f + expf(-s0)) * s1;
        else if (MODE == 1)
        {
            if (ksplit == 1) { yt[r0] += s0; if (r0 + 1 < rows) yt[r0 + 1] += s1; }
            else { atomicAdd(yt + r0, s0); if (r0 + 1 < rows) atomicAdd(yt + r0 + 1, s1); }
        }
        else { yt[r0] = s0; if (r0 + 1 < rows) yt[r0 + 1] = s1; }
    }
}

#define GEMV(NAME, W, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_##NT(const W::T* w, const float* x, float* y, int rows, int cols, int ksplit) { gemv<W, NT, 0>(w, x, y, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_acc_##NT(const W::T* w, const float* x, float* y, int rows, int cols, int ksplit) { gemv<W, NT, 1>(w, x, y, rows, cols, ksplit); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu_##NT(const W::T* w, const float* x, float* y, int rows, int cols, int ksplit) { gemv<W, NT, 2>(w, x, y, rows, cols, 1); }
#define GEMV_ALL(NAME, W) GEMV(NAME, W, 1) GEMV(NAME, W, 2) GEMV(NAME, W, 3) GEMV(NAME, W, 4) GEMV(NAME, W, 5) GEMV(NAME, W, 6) GEMV(NAME, W, 7) GEMV(NAME, W, 8)

GEMV_ALL(gemv_f32, WeightF32)
GEMV_ALL(gemv_bf16, WeightBF16)
GEMV_ALL(gemv_f16, WeightF16)
