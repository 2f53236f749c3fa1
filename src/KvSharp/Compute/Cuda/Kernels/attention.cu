// Flash-decoding attention over a float16 KV cache laid out per layer as [kv_heads, capacity, hd].
// Pass 1 (attn_split): block (split, kv head, query row) scores one chunk of the sequence for all the
// query heads that share the KV head (GQA: K and V are read once per group), and writes the chunk's
// unnormalized output with its running max and sum. Pass 2 (attn_combine) merges the chunks.
// Query row t sits at position *pos + t and sees positions 0 .. *pos + t (causal).
#include "common.cuh"

#define MAX_GROUP 16

extern "C" __global__ void __launch_bounds__(128) attn_split(
    const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
    float* __restrict__ part_out, float* __restrict__ part_ml,
    int heads, int kv_heads, int hd, int capacity, const int* pos, int chunk, int splits, float scale)
{
    const int split = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;
    const int group = heads / kv_heads;
    const int visible = *pos + t + 1;
    const int j0 = split * chunk;
    const int j1 = min(j0 + chunk, visible);
    extern __shared__ float smem[];
    float* qs = smem;                // [group, hd], pre-scaled
    float* sc = smem + group * hd;   // [group, chunk] scores, then probabilities
    const long first = ((long)t * heads + (long)kvh * group) * splits + split; // (t, head kvh*group, split)

    if (j0 >= j1)
    {
        // Past the causal limit (or the cache length): an empty chunk the combine step skips.
        for (int i = threadIdx.x; i < group; i += blockDim.x) { part_ml[(first + (long)i * splits) * 2] = neg_inf(); part_ml[(first + (long)i * splits) * 2 + 1] = 0.0f; }
        for (int i = threadIdx.x; i < group * hd; i += blockDim.x) part_out[(first + (long)(i / hd) * splits) * hd + i % hd] = 0.0f;
        return;
    }
    const float* qb = q + ((long)t * heads + (long)kvh * group) * hd;
    for (int i = threadIdx.x; i < group * hd; i += blockDim.x) qs[i] = qb[i] * scale;
    __syncthreads();

    const int n = j1 - j0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const u16* kb = kc + ((long)kvh * capacity + j0) * hd;
    const int pairs = hd / 2;
    // Scores: one warp per key, lanes over pairs of dimensions (4-byte loads of two float16).
    for (int j = warp; j < n; j += warps)
    {
        const unsigned* kr = reinterpret_cast<const unsigned*>(kb + (long)j * hd);
        float acc[MAX_GROUP];
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++) acc[g] = 0.0f;
        for (int p = lane; p < pairs; p += 32)
        {
            const unsigned kk = __ldg(kr + p);
            const float k0 = f16_to_f32((u16)(kk & 0xffffu)), k1 = f16_to_f32((u16)(kk >> 16));
#pragma unroll
            for (int g = 0; g < MAX_GROUP; g++)
                if (g < group) acc[g] += qs[g * hd + 2 * p] * k0 + qs[g * hd + 2 * p + 1] * k1;
        }
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++)
        {
            if (g < group)
            {
                const float s = warp_sum(acc[g]);
                if (lane == 0) sc[g * chunk + j] = s;
            }
        }
    }
    __syncthreads();

    // Softmax statistics of the chunk, one warp per query head.
    for (int g = warp; g < group; g += warps)
    {
        float m = neg_inf();
        for (int j = lane; j < n; j += 32) m = fmaxf(m, sc[g * chunk + j]);
        m = warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < n; j += 32) { const float e = expf(sc[g * chunk + j] - m); sc[g * chunk + j] = e; l += e; }
        l = warp_sum(l);
        if (lane == 0) { part_ml[(first + (long)g * splits) * 2] = m; part_ml[(first + (long)g * splits) * 2 + 1] = l; }
    }
    __syncthreads();

    // Weighted values: threads over dimensions, every head of the group from one read of V.
    const u16* vb = vc + ((long)kvh * capacity + j0) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
    {
        float acc[MAX_GROUP];
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++) acc[g] = 0.0f;
        for (int j = 0; j < n; j++)
        {
            const float v = f16_to_f32(vb[(long)j * hd + d]);
#pragma unroll
            for (int g = 0; g < MAX_GROUP; g++)
                if (g < group) acc[g] += sc[g * chunk + j] * v;
        }
#pragma unroll
        for (int g = 0; g < MAX_GROUP; g++)
            if (g < group) part_out[(first + (long)g * splits) * hd + d] = acc[g];
    }
}

// out[t, h, :] = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s over the chunks s of (t, h). Grid (heads, rows).
extern "C" __global__ void attn_combine(const float* __restrict__ part_out, const float* __restrict__ part_ml, float* __restrict__ out,
    int heads, int hd, int splits)
{
    const int h = blockIdx.x, t = blockIdx.y;
    const long base = ((long)t * heads + h) * splits;
    float m = neg_inf();
    for (int s = 0; s < splits; s++) m = fmaxf(m, part_ml[(base + s) * 2]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
    {
        float acc = 0.0f, l = 0.0f;
        for (int s = 0; s < splits; s++)
        {
            const float ls = part_ml[(base + s) * 2 + 1];
            if (ls == 0.0f) continue;
            const float w = expf(part_ml[(base + s) * 2] - m);
            l += ls * w;
            acc += part_out[(base + s) * hd + d] * w;
        }
        out[((long)t * heads + h) * hd + d] = acc / l;
    }
}
