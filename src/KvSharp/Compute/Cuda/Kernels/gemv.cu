// Matrix-vector products for decode: y[t, r] = sum_c w[r, c] * x[t, c] for NT <= 8 activation rows.
// Memory-bound: every weight byte is read once, 16 bytes per lane per load, one warp per output row,
// with several loads in flight (unrolled loop); x (a few KB) stays in L1/L2. Accumulation is float32.
#include "common.cuh"

template <class W, int NT>
__device__ __forceinline__ void gemv(const typename W::T* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows, int cols)
{
    const int row = (int)((blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const typename W::T* wr = w + (long)row * cols;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;

    if (cols % W::Vec == 0)
    {
        // Rows start 16-byte aligned: cols is a multiple of the vector width and buffers are 256-byte aligned.
        const uint4* wv = reinterpret_cast<const uint4*>(wr);
        const int nv = cols / W::Vec;
#pragma unroll 4
        for (int i = lane; i < nv; i += 32)
        {
            float wf[W::Vec];
            W::unpack(__ldg(wv + i), wf);
#pragma unroll
            for (int t = 0; t < NT; t++)
            {
                const float4* xv = reinterpret_cast<const float4*>(x + (long)t * cols + (long)i * W::Vec);
#pragma unroll
                for (int q = 0; q < W::Vec / 4; q++)
                {
                    const float4 xx = __ldg(xv + q);
                    acc[t] += wf[4 * q] * xx.x + wf[4 * q + 1] * xx.y + wf[4 * q + 2] * xx.z + wf[4 * q + 3] * xx.w;
                }
            }
        }
    }
    else
    {
        for (int c = lane; c < cols; c += 32)
        {
            const float wf = W::get(wr, c);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += wf * x[(long)t * cols + c];
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        const float s = warp_sum(acc[t]);
        if (lane == 0) y[(long)t * rows + row] = s;
    }
}

#define GEMV(NAME, W, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_##NT(const W::T* w, const float* x, float* y, int rows, int cols) { gemv<W, NT>(w, x, y, rows, cols); }
#define GEMV_ALL(NAME, W) GEMV(NAME, W, 1) GEMV(NAME, W, 2) GEMV(NAME, W, 3) GEMV(NAME, W, 4) GEMV(NAME, W, 5) GEMV(NAME, W, 6) GEMV(NAME, W, 7) GEMV(NAME, W, 8)

GEMV_ALL(gemv_f32, WeightF32)
GEMV_ALL(gemv_bf16, WeightBF16)
GEMV_ALL(gemv_f16, WeightF16)
