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
// Launched programmatically after the attention; the output projection after it waits in turn. Its body is merge_head,
// which paged_merge_project below shares (where the output product's weights are bfloat16 or float16).
// Merges query head `head` (t · heads + h) of a merge_grid launch with the block's warps (at most 16), ROUND chunks a warp
// at a time; `readers` blocks read the KV head's count at `counter` (the last resets it). The merged, normalized output
// (a float4 of channels 4·lane .. 4·lane + 3) is returned to warp 0's lanes; the other warps get zeros.
template <int ROUND>
__device__ __forceinline__ float4 merge_head(const float* part_out, const float* part_ml, int* counter, int readers, long head, int splits)
{
    constexpr int HD = 128, H4 = HD / 4;
    __shared__ int live_s;
    __shared__ float wm[16], wl[16];
    __shared__ float4 wo[16][H4];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int old = threadIdx.x == 0 ? atomicAdd(counter, 1 << 16) : 0;
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
        if ((old >> 16) == readers - 1) *counter = 0; // the KV head's last reader: every other block has its count
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
    float4 r = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (warp != 0) return r;
    float mx = neg_inf();
    for (int w = 0; w < warps; w++) if (wl[w] > 0.0f) mx = fmaxf(mx, wm[w]);
    float sum = 0.0f;
    for (int w = 0; w < warps; w++)
        if (wl[w] > 0.0f)
        {
            const float e = expf(wm[w] - mx);
            sum += wl[w] * e;
            add_weighted(r, wo[w][lane], e);
        }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    return make_float4(r.x * inv, r.y * inv, r.z * inv, r.w * inv);
}

extern "C" __global__ void __launch_bounds__(512) paged_merge_heads(const float* part_out, const float* part_ml, int* counters,
    float* __restrict__ out, int heads, int kv_heads, int splits, int group)
{
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, t = blockIdx.y;
    const long head = (long)t * heads + h;
    const float4 r = merge_head<8>(part_out, part_ml, counters + (long)t * kv_heads + h / group, group, head, splits);
    if (threadIdx.x < 32) reinterpret_cast<float4*>(out + head * 128)[threadIdx.x] = r;
}

// The batch-1 head merge folded into the attention's output product (CudaPagedKernels.MergeProjection): y[r] +=
// Σ_c w[r, c] · attention[c] over a [rows, heads · 128] bfloat16 or float16 matrix, y the residual stream.
// Why: after the merge grid above, the output product waited for its result across one more kernel boundary (its wait
// returned ~2.6 us after the merge's exit, on stop 26's step timeline). Here the product's own blocks merge: every
// batch-1 paged step 0.3-1.0% faster on an H100 (stop 27, docs/benchmarks.md, where the variants not kept are listed).
// It is not launched programmatically (CudaPagedKernels.IsProgrammatic does not name it, and programmatic launch is
// off for the kernels it does not name): its blocks start when the attention grid has ended, pdl_wait returns at once,
// and the first weight loads overlap only the merge's own round trips. A programmatic launch is untried.
// Grid (heads, parts), 256 threads, two blocks a multiprocessor (the host takes parts = 2 · SMs / heads: one wave):
// block (h, p) merges query head h (every part redundantly: the G · parts blocks of a KV head read its count) and
// multiplies it into rows [p · per, (p + 1) · per) of the matrix's 128 columns of head h, adding atomically (the heads of
// a row add in any order, as gemv.cu's split rows do). A warp takes 2 · LOADS rows at a time: lane (half, i) loads 16
// bytes (8 columns, i of the head's 16) of rows base + 2k + half, k < LOADS (the first LOADS before pdl_wait and the merge:
// weights never depend on an earlier kernel), and each half-warp's LOADS partial sums are reduced across its 16 lanes (plain
// folds, then a transposing butterfly: 15 exchanges), after which lane (half, i < LOADS) holds row base + 2i + half.
// Block part 0 also writes the merged head to out (the attention output).
template <class W>
__device__ __forceinline__ void merge_project(const u16* __restrict__ w, const float* part_out, const float* part_ml, int* counters,
    float* __restrict__ out, float* __restrict__ y, int heads, int splits, int group, int rows)
{
    constexpr int HD = 128, LOADS = 8, ROWS = 2 * LOADS, ROUND = 8;
    __shared__ float4 xs[HD / 4];
    const int h = blockIdx.x, part = blockIdx.y, parts = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, half = lane >> 4, li = lane & 15;
    const long stride = (long)heads * HD / 8; // 16-byte vectors a weight row
    const int per = ((rows + parts - 1) / parts + ROWS - 1) / ROWS * ROWS;
    const int end = min(rows, (part + 1) * per);
    const uint4* wh = reinterpret_cast<const uint4*>(w + (long)h * HD) + li;
    uint4 buf[LOADS];
    // Rows past the matrix reload its last row (an L2 hit) and are not added.
    auto load = [&](int base) {
#pragma unroll
        for (int k = 0; k < LOADS; k++) buf[k] = load_stream(wh + (long)min(base + 2 * k + half, rows - 1) * stride);
    };
    int base = part * per + warp * ROWS;
    if (base < end) load(base);
    pdl_wait();
    const float4 r = merge_head<ROUND>(part_out, part_ml, counters + h / group, group * parts, h, splits);
    if (warp == 0)
    {
        xs[lane] = r;
        if (part == 0) reinterpret_cast<float4*>(out + (long)h * HD)[lane] = r;
    }
    __syncthreads();
    pdl_trigger();
    const float4 x0 = xs[2 * li], x1 = xs[2 * li + 1];
    for (; base < end; base += warps * ROWS)
    {
        float p[LOADS];
#pragma unroll
        for (int k = 0; k < LOADS; k++)
        {
            float f[8];
            W::unpack(buf[k], f);
            p[k] = f[0] * x0.x + f[1] * x0.y + f[2] * x0.z + f[3] * x0.w + f[4] * x1.x + f[5] * x1.y + f[6] * x1.z + f[7] * x1.w;
        }
        if (base + warps * ROWS < end) load(base + warps * ROWS);
        // After the exchange of distance d, a lane keeps the half of its 2d sums its bit d picks, the other half's
        // partner's added: at the end p[0] is the sum over the 16 lanes of k = i.
#pragma unroll
        for (int d = 8; d >= 1; d >>= 1)
        {
            if (2 * d > LOADS) // fewer sums than lanes: plain folds first
            {
#pragma unroll
                for (int k = 0; k < LOADS; k++) p[k] += __shfl_xor_sync(0xffffffffu, p[k], d);
                continue;
            }
            const bool upper = (li & d) != 0;
#pragma unroll
            for (int k = 0; k < d; k++)
            {
                const float send = upper ? p[k] : p[k + d], keep = upper ? p[k + d] : p[k];
                p[k] = keep + __shfl_xor_sync(0xffffffffu, send, d);
            }
        }
        const int row = base + 2 * li + half;
        if (li < LOADS && row < end) atomicAdd(y + row, p[0]);
    }
}

// 128 registers at most: LOADS loads and ROUND merge chunks a lane. Of the variants measured (stop 27), 512 threads with
// 16 loads (one block a multiprocessor) and 256 or 128 threads with 8 or 4 loads and 4 chunks (80 or 64 registers, 3-6
// blocks) were all slower.
extern "C" __global__ void __launch_bounds__(256, 2) paged_merge_project_bf16(const u16* w, const float* part_out, const float* part_ml,
    int* counters, float* out, float* y, int heads, int splits, int group, int rows)
{
    merge_project<WeightBF16>(w, part_out, part_ml, counters, out, y, heads, splits, group, rows);
}

extern "C" __global__ void __launch_bounds__(256, 2) paged_merge_project_f16(const u16* w, const float* part_out, const float* part_ml,
    int* counters, float* out, float* y, int heads, int splits, int group, int rows)
{
    merge_project<WeightF16>(w, part_out, part_ml, counters, out, y, heads, splits, group, rows);
}
