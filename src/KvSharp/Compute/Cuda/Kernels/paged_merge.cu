// The pipelined paged attention's head merge as a grid of its own, for batch-1 steps (CudaPagedKernels.HeadMergeGrid), in
// a module of its own so that paged_attention_tc.cu's code does not change with it.
#include "common.cuh"

// Why: in the pipelined kernel the last unit of a (row, KV head) merges the head's 30-123 partial outputs alone, 8.5-9.2 us
// after its own split while the other SMs have finished (stop 25's block timeline, batch 1); spread over blocks of up to 16
// warps here it took ~2.8 us a layer off the batch-1 steps (0.3-1.6% a step, stop 26, docs/benchmarks.md). At batch 8
// the grid of its own was 0.6-1.5% slower a step (the other units keep the SMs busy during the in-kernel merges, and the
// extra launch costs its boundary), so batch steps keep the in-kernel merge.
//
// The pipelined launch with merge_grid stores each split's partial output and (max, sum) and, from split 0 of each (row,
// KV head), the head's live split count in counters[t · kv_heads + kvh]; it merges nothing. Grid (heads, rows), 32·W
// threads (W = ceil(splits / 8), at most 16): block (h, t) merges query head h of row t. Warp w takes chunks w, w + W, ...
// eight at a time, each chunk's (max, sum) pair and partial output loaded together, the first eight issued with the
// count's atomic (one round trip to L2 for up to 8·W chunks; slots past the live count are loaded but not used), an
// online rescale between rounds; the warps' (max, sum, output) meet in shared memory. Weights e^(m_s - M) / L as
// merge_chunks; a chunk of l_s = 0 (nothing visible; its part_out may be unwritten) weighs 0 and is not added; a head with
// nothing visible outputs 0. The G query heads of a KV head read its count with an atomic add of 1 << 16 (readers in the
// high half); the last reader resets it for the next launch (the other kernels' arrival counters start from 0).
// Launched programmatically after the attention; the output projection after it waits in turn.
extern "C" __global__ void __launch_bounds__(512) paged_merge_heads(const float* part_out, const float* part_ml, int* counters,
    float* __restrict__ out, int heads, int kv_heads, int splits, int group)
{
    constexpr int HD = 128, H4 = HD / 4, ROUND = 8;
    __shared__ int live_s;
    __shared__ float wm[16], wl[16];
    __shared__ float4 wo[16][H4];
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int* counter = counters + (long)t * kv_heads + h / group;
    const int old = threadIdx.x == 0 ? atomicAdd(counter, 1 << 16) : 0;
    const long head = (long)t * heads + h;
    const float2* ml = reinterpret_cast<const float2*>(part_ml) + head * splits;
    const float4* po = reinterpret_cast<const float4*>(part_out + head * splits * HD) + lane;
    float m = neg_inf(), l = 0.0f;
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float2 x[ROUND];
    float4 v[ROUND];
    // The first round's loads go out with the count's (bounded by splits, the slots the launch has): one round trip.
#pragma unroll
    for (int k = 0; k < ROUND; k++)
    {
        const int s = warp + k * warps;
        if (s < splits) { x[k] = __ldcg(ml + s); v[k] = __ldcg(po + (long)s * H4); }
    }
    if (threadIdx.x == 0)
    {
        live_s = old & 0xffff;
        if ((old >> 16) == group - 1) *counter = 0; // the KV head's last reader: every other block has its count
    }
    __syncthreads();
    const int live = live_s;
    for (int s0 = warp; s0 < live; s0 += ROUND * warps)
    {
        if (s0 != warp)
#pragma unroll
            for (int k = 0; k < ROUND; k++)
            {
                const int s = s0 + k * warps;
                if (s < live) { x[k] = __ldcg(ml + s); v[k] = __ldcg(po + (long)s * H4); }
            }
#pragma unroll
        for (int k = 0; k < ROUND; k++) if (s0 + k * warps >= live) x[k] = make_float2(neg_inf(), 0.0f);
        float mr = m;
#pragma unroll
        for (int k = 0; k < ROUND; k++) if (x[k].y != 0.0f) mr = fmaxf(mr, x[k].x);
        if (mr != m) // a larger max: what was summed so far is rescaled (e^-inf = 0 the first time)
        {
            const float r = expf(m - mr);
            o.x *= r; o.y *= r; o.z *= r; o.w *= r;
            l *= r;
            m = mr;
        }
#pragma unroll
        for (int k = 0; k < ROUND; k++)
            if (x[k].y != 0.0f)
            {
                const float w = expf(x[k].x - m);
                l += x[k].y * w;
                add_weighted(o, v[k], w);
            }
    }
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
    wo[warp][lane] = o;
    __syncthreads();
    if (warp != 0) return;
    float mx = neg_inf();
    for (int w = 0; w < warps; w++) if (wl[w] > 0.0f) mx = fmaxf(mx, wm[w]);
    float sum = 0.0f;
    float4 r = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int w = 0; w < warps; w++)
        if (wl[w] > 0.0f)
        {
            const float e = expf(wm[w] - mx);
            sum += wl[w] * e;
            add_weighted(r, wo[w][lane], e);
        }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    reinterpret_cast<float4*>(out + head * HD)[lane] = make_float4(r.x * inv, r.y * inv, r.z * inv, r.w * inv);
}
