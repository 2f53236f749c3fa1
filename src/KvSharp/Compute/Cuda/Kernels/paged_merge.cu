// The pipelined paged attention's head merge as a grid of its own (CudaPagedKernels.HeadMergeGrid), in a module of its
// own so that paged_attention.cu's code does not change with it.
#include "common.cuh"

// The pipelined kernel's head merge (PREPARED in stop 25, not yet run on a GPU): the pipelined
// launch with merge_grid stores each split's partial output and (max, sum) and, from split 0 of each (row, KV head), the
// head's live split count in counters[t · kv_heads + kvh]; it merges nothing. Here block (kvh, t) of 128·G threads merges
// the G query heads of that pair: warp (g, q) sums splits q, q + 4, ... of head g (a lane a float4 of the 128 channels),
// the four quarters meet in shared memory. In the pipelined kernel the last unit of a head merged alone, 30-123 partial
// outputs read by one block's 128 threads: 8.7-12.2 µs while the other SMs waited (stop 25, docs/benchmarks.md). It resets
// the counter for the next launch (the arrival counters of the other kernels start from 0). Launched programmatically
// after the attention; the output projection after it waits in turn. Weights as merge_chunks: e^(m_s - M) / L, a chunk of
// l_s = 0 (nothing visible; its part_out may be unwritten) weighs 0 and is not added; a head with nothing visible outputs 0.
template <int G>
__device__ __forceinline__ void merge_heads(const float* part_out, const float* part_ml, int* counters, float* __restrict__ out,
    int heads, int kv_heads, int splits)
{
    constexpr int HD = 128, H4 = HD / 4, QUARTERS = 4;
    __shared__ int live_s;
    __shared__ float4 partial[G][QUARTERS][H4];
    __shared__ float inv_l[G];
    pdl_wait();
    pdl_trigger();
    const int kvh = blockIdx.x, t = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = warp / QUARTERS, quarter = warp % QUARTERS;
    int* counter = counters + (long)t * kv_heads + kvh;
    if (threadIdx.x == 0) live_s = *counter;
    __syncthreads();
    const int live = live_s;
    if (threadIdx.x == 0) *counter = 0; // every thread has read it (the barrier above)
    const long head = (long)t * heads + (long)kvh * G + g;
    const float2* ml = reinterpret_cast<const float2*>(part_ml) + head * splits;
    // The head's max and sum over its live chunks, every warp of the head for itself (a warp reads ceil(live / 32) pairs a lane).
    float m = neg_inf();
    for (int s = lane; s < live; s += 32) { const float2 x = __ldcg(ml + s); if (x.y != 0.0f) m = fmaxf(m, x.x); }
    m = warp_max(m);
    float l = 0.0f;
    for (int s = lane; s < live; s += 32) { const float2 x = __ldcg(ml + s); if (x.y != 0.0f) l += x.y * expf(x.x - m); }
    l = warp_sum(l);
    if (quarter == 0 && lane == 0) inv_l[g] = l > 0.0f ? 1.0f / l : 0.0f;
    // This warp's quarter of the chunks: loads issued 8 at a time, each chunk's weight from its pair (a broadcast load).
    const float4* po = reinterpret_cast<const float4*>(part_out + head * splits * HD) + lane;
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
    for (int s = quarter; s < live; s += QUARTERS)
    {
        const float2 x = __ldcg(ml + s);
        const float4 v = __ldcg(po + (long)s * H4);
        add_weighted(o, v, x.y == 0.0f ? 0.0f : expf(x.x - m));
    }
    partial[g][quarter][lane] = o;
    __syncthreads();
    if (quarter == 0)
    {
        const float inv = inv_l[g];
        float4 r = partial[g][0][lane];
#pragma unroll
        for (int k = 1; k < QUARTERS; k++)
        {
            const float4 p = partial[g][k][lane];
            r.x += p.x; r.y += p.y; r.z += p.z; r.w += p.w;
        }
        reinterpret_cast<float4*>(out + head * HD)[lane] = make_float4(r.x * inv, r.y * inv, r.z * inv, r.w * inv);
    }
}

// Grid (kv_heads, rows), 128·G threads (CudaPagedKernels.Attention, after a pipelined launch with merge_grid).
#define PAGED_MERGE_HEADS(G) \
    extern "C" __global__ void __launch_bounds__(128 * G) paged_merge_heads_g##G(const float* po, const float* pml, int* counters, float* out, \
        int heads, int kv_heads, int splits) \
    { \
        merge_heads<G>(po, pml, counters, out, heads, kv_heads, splits); \
    }
PAGED_MERGE_HEADS(1) PAGED_MERGE_HEADS(2) PAGED_MERGE_HEADS(4) PAGED_MERGE_HEADS(8)
