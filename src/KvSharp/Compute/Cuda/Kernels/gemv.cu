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
// NORM (modes 0 and 2, whole rows per warp): x is the raw residual stream and the product is taken
// with RMSNorm(x) * nw, the norm fused in: the loop multiplies x by nw and sums x^2 on the way, and
// the dot is scaled by 1/sqrt(mean(x^2) + eps) at the end (no separate norm kernel, no normed copy).
// Before pdl_wait the warp only prefetches its weight rows into L2: weights are never written, so this
// overlaps the previous kernel's tail under programmatic dependent launch.
#include "common.cuh"

template <class W, int NT, int MODE, bool NORM>
__device__ __forceinline__ void gemv(const typename W::T* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
    const float* __restrict__ nw, float eps, int rows, int cols, int ksplit)
{
    int warp = (int)((blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    int part = 0;
    if (MODE == 1) { part = warp % ksplit; warp /= ksplit; }
    int r0, r1;
    bool active;
    if (MODE == 2)
    {
        active = warp < rows;
        r0 = warp;
        r1 = warp + rows;
    }
    else
    {
        r0 = 2 * warp;
        active = r0 < rows;
        r1 = min(r0 + 1, rows - 1);
    }
    const typename W::T* w0 = w + (long)r0 * cols;
    const typename W::T* w1 = w + (long)r1 * cols;
    const bool vectorized = cols % W::Vec == 0;
    const int nv = cols / W::Vec;
    const int per_part = vectorized ? (nv + ksplit - 1) / ksplit : (cols + ksplit - 1) / ksplit;
    const int begin = part * per_part;
    const int end = min(vectorized ? nv : cols, (part + 1) * per_part);
    if (active && vectorized)
    {
        const char* p0 = reinterpret_cast<const char*>(w0) + (long)begin * 16;
        const char* p1 = reinterpret_cast<const char*>(w1) + (long)begin * 16;
        for (long o = lane * 128L; o < (long)(end - begin) * 16; o += 32 * 128L) { prefetch_l2(p0 + o); prefetch_l2(p1 + o); }
    }
    pdl_wait();
    pdl_trigger();
    if (!active) return;

    float a0[NT], a1[NT], ss[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) { a0[t] = 0.0f; a1[t] = 0.0f; ss[t] = 0.0f; }

    if (vectorized)
    {
        // Rows start 16-byte aligned: cols is a multiple of the vector width and buffers are 256-byte aligned.
        const uint4* v0 = reinterpret_cast<const uint4*>(w0);
        const uint4* v1 = reinterpret_cast<const uint4*>(w1);
#pragma unroll 4
        for (int i = begin + lane; i < end; i += 32)
        {
            float f0[W::Vec], f1[W::Vec];
            W::unpack(load_stream(v0 + i), f0);
            W::unpack(load_stream(v1 + i), f1);
            float4 nwv[W::Vec / 4];
            if (NORM)
            {
#pragma unroll
                for (int q = 0; q < W::Vec / 4; q++) nwv[q] = __ldg(reinterpret_cast<const float4*>(nw + (long)i * W::Vec) + q);
            }
#pragma unroll
            for (int t = 0; t < NT; t++)
            {
                const float4* xv = reinterpret_cast<const float4*>(x + (long)t * cols + (long)i * W::Vec);
#pragma unroll
                for (int q = 0; q < W::Vec / 4; q++)
                {
                    float4 xx = __ldg(xv + q);
                    if (NORM)
                    {
                        ss[t] += xx.x * xx.x + xx.y * xx.y + xx.z * xx.z + xx.w * xx.w;
                        xx.x *= nwv[q].x; xx.y *= nwv[q].y; xx.z *= nwv[q].z; xx.w *= nwv[q].w;
                    }
                    a0[t] += f0[4 * q] * xx.x + f0[4 * q + 1] * xx.y + f0[4 * q + 2] * xx.z + f0[4 * q + 3] * xx.w;
                    a1[t] += f1[4 * q] * xx.x + f1[4 * q + 1] * xx.y + f1[4 * q + 2] * xx.z + f1[4 * q + 3] * xx.w;
                }
            }
        }
    }
    else
    {
        for (int c = begin + lane; c < end; c += 32)
        {
            const float f0 = W::get(w0, c), f1 = W::get(w1, c);
            const float g = NORM ? nw[c] : 1.0f;
#pragma unroll
            for (int t = 0; t < NT; t++)
            {
                const float xx = x[(long)t * cols + c];
                if (NORM) ss[t] += xx * xx;
                a0[t] += f0 * xx * g;
                a1[t] += f1 * xx * g;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        float s0 = warp_sum(a0[t]), s1 = warp_sum(a1[t]);
        if (NORM)
        {
            const float inv = 1.0f / sqrtf(warp_sum(ss[t]) / cols + eps);
            s0 *= inv;
            s1 *= inv;
        }
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

#define GEMV_ARGS(W) const W::T* w, const float* x, float* y, const float* nw, float eps, int rows, int cols, int ksplit
#define GEMV(NAME, W, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_##NT(GEMV_ARGS(W)) { gemv<W, NT, 0, false>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_norm_##NT(GEMV_ARGS(W)) { gemv<W, NT, 0, true>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_acc_##NT(GEMV_ARGS(W)) { gemv<W, NT, 1, false>(w, x, y, nw, eps, rows, cols, ksplit); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu_##NT(GEMV_ARGS(W)) { gemv<W, NT, 2, false>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu_norm_##NT(GEMV_ARGS(W)) { gemv<W, NT, 2, true>(w, x, y, nw, eps, rows, cols, 1); }
#define GEMV_ALL(NAME, W) GEMV(NAME, W, 1) GEMV(NAME, W, 2) GEMV(NAME, W, 3) GEMV(NAME, W, 4) GEMV(NAME, W, 5) GEMV(NAME, W, 6) GEMV(NAME, W, 7) GEMV(NAME, W, 8)

GEMV_ALL(gemv_f32, WeightF32)
GEMV_ALL(gemv_bf16, WeightBF16)
GEMV_ALL(gemv_f16, WeightF16)
