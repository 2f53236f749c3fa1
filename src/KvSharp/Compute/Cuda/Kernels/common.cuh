// Shared helpers for KvSharp's CUDA kernels. Compiled by NVRTC without the CUDA headers, so 16-bit
// floats are plain unsigned shorts converted with PTX instructions (exact, round-to-nearest-even).
#pragma once

typedef unsigned short u16;

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((unsigned)b) << 16); }
__device__ __forceinline__ float f16_to_f32(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f32_to_f16(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ u16 f32_to_bf16(float f) { u16 h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float partial[32];
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); // a previous call may still be reading partial[0]
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0)
    {
        v = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) partial[0] = v;
    }
    __syncthreads();
    return partial[0];
}

// Weight element types: how to read one element, and how to unpack a 16-byte vector of them.
struct WeightF32
{
    typedef float T;
    static const int Vec = 4;
    static __device__ __forceinline__ float get(const T* p, long i) { return p[i]; }
    static __device__ __forceinline__ void unpack(uint4 v, float* out)
    {
        out[0] = __uint_as_float(v.x); out[1] = __uint_as_float(v.y); out[2] = __uint_as_float(v.z); out[3] = __uint_as_float(v.w);
    }
};

struct WeightBF16
{
    typedef u16 T;
    static const int Vec = 8;
    static __device__ __forceinline__ float get(const T* p, long i) { return bf16_to_f32(p[i]); }
    static __device__ __forceinline__ void unpack(uint4 v, float* out)
    {
        unsigned w[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
        for (int i = 0; i < 4; i++) { out[2 * i] = __uint_as_float(w[i] << 16); out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); }
    }
};

struct WeightF16
{
    typedef u16 T;
    static const int Vec = 8;
    static __device__ __forceinline__ float get(const T* p, long i) { return f16_to_f32(p[i]); }
    static __device__ __forceinline__ void unpack(uint4 v, float* out)
    {
        unsigned w[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
        for (int i = 0; i < 4; i++) { out[2 * i] = f16_to_f32((u16)(w[i] & 0xffffu)); out[2 * i + 1] = f16_to_f32((u16)(w[i] >> 16)); }
    }
};

// 16-byte load of data read exactly once (weights, the KV cache): skips L1 so the small, reused
// operands (activations, queries) stay there.
__device__ __forceinline__ uint4 load_stream(const void* p)
{
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// An L2 eviction policy for data read once (the KV cache a decode attention streams): its lines are the first to go, so the
// stream does not push out lines that are still to be read (a split's F32 residual that prefetch_float_tail asked for at
// the start, the tables, partial results, prefetched weights). On an H200 the pipelined paged kernel's bulk copies with
// it made the F16 paged step 9.5% faster at 32K tokens and 14% at 128K; the dense kernel's loads neither gained nor lost.
__device__ __forceinline__ unsigned long long l2_evict_first()
{
    unsigned long long policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}

// load_stream with an L2 cache policy (l2_evict_first).
__device__ __forceinline__ uint4 load_stream(const void* p, unsigned long long policy)
{
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p), "l"(policy));
    return r;
}

// Asks L2 for device memory the kernels after this one read (the next product's weights: CudaTransformer's
// PrefetchNextWeights, off by default since it measured no faster), to stream it in while a latency-bound attention
// leaves device memory idle: two ranges [a, a + na) and [b, b + nb) (16-byte aligned, sizes multiples of 16) taken as
// one and cut into equal slices, one per grid block, each asked for by thread 0 with one bulk prefetch per range it
// touches (the copy engine fetches the lines; nothing waits for them). Weights never depend on an earlier kernel of the
// step, so it runs before pdl_wait. na + nb = 0: nothing. A hint only: no result depends on it.
__device__ __forceinline__ void prefetch_l2(const void* a, long na, const void* b, long nb)
{
#if __CUDA_ARCH__ >= 900
    if (na + nb <= 0 || threadIdx.x + threadIdx.y + threadIdx.z != 0) return;
    const long blocks = (long)gridDim.x * gridDim.y * gridDim.z;
    const long id = blockIdx.x + (long)gridDim.x * (blockIdx.y + (long)gridDim.y * blockIdx.z);
    const long per = (((na + nb) >> 4) + blocks - 1) / blocks * 16;
    const long s = id * per, e = min(s + per, na + nb); // this block's bytes of the joined range
    if (s < min(e, na))
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(static_cast<const char*>(a) + s), "r"((unsigned)(min(e, na) - s)) : "memory");
    if (max(s, na) < e)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(static_cast<const char*>(b) + (max(s, na) - na)), "r"((unsigned)(e - max(s, na)))
                     : "memory");
#endif
}

// Programmatic dependent launch (sm_90+; launches without the attribute make both no-ops). A kernel
// launched with it may start while the previous kernel on the stream is still running: pdl_wait()
// blocks until that kernel has finished and its writes are visible, so everything before it may only
// read data no earlier kernel writes (weights). Every kernel has blocks that call pdl_wait() before
// they trigger or exit, so "the previous kernel finished" implies the ones before it finished too (blocks
// with nothing to do may leave without waiting: paged_cache.cu's encode blocks with no full head, the
// pipelined attention's units past the layer's work when it reads its tables early; their grids' other
// blocks wait, and trigger only after it).
// pdl_trigger() lets the next kernel's blocks be scheduled as this kernel's blocks retire. Every kernel
// calls it after its own pdl_wait(), so a kernel running before its wait overlaps only the kernel just
// before it: what only earlier kernels wrote is complete then (through L2: __ldcg), which the split batch
// append relies on where its caller vouches for the kernel before it (paged_rope_append_split's early).
__device__ __forceinline__ void pdl_wait()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// RoPE of rotation pair i of a head of hd channels at position p: its two channels (interleaved: 2i and 2i + 1;
// half-split: i and i + hd/2) and the rotation of (x0, x1) by p · inv_freq[i], the arithmetic of the CPU's RoPE.
__device__ __forceinline__ void rope_channels(int i, int hd, int interleaved, int& i0, int& i1)
{
    i0 = interleaved ? 2 * i : i;
    i1 = interleaved ? 2 * i + 1 : i + hd / 2;
}
// The rotation by an angle's cosine c and sine s (rope_rotate's; a caller that takes them ahead, as paged_cache.cu's batch QKV
// product does before its wait, gets the same bits). Rounded products and sums, never contracted: left to the compiler,
// x0 * c - x1 * s became a fused multiply-add one way in one kernel and another way in the other (a key code a step apart
// in stop 33's check).
__device__ __forceinline__ void rope_apply(float c, float s, float x0, float x1, float& y0, float& y1)
{
    y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    y1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}
__device__ __forceinline__ float rope_angle(int p, float inv_freq_i) { return (float)p * inv_freq_i; }
__device__ __forceinline__ void rope_rotate(int p, float inv_freq_i, float x0, float x1, float& y0, float& y1)
{
    const float angle = rope_angle(p, inv_freq_i);
    rope_apply(cosf(angle), sinf(angle), x0, x1, y0, y1);
}


// Whether this block is the last of the (row t, kv head) pair's `live` splits to finish (merge_splits' counter); block-uniform.
__device__ __forceinline__ bool last_split(int* counters, int t, int kv_heads, int kvh, int live, bool claims = false)
{
    __shared__ int is_last;
    __threadfence(); // this block's partial results are visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0)
    {
        // claims: the low half counts arrivals, the high half holds the pipelined kernel's block claims (its STEAL build).
        const int done = atomicAdd(counters + (long)t * kv_heads + kvh, 1) & (claims ? 0xffff : ~0);
        is_last = done == live - 1;
        if (is_last) counters[(long)t * kv_heads + kvh] = 0; // ready for the next launch
    }
    __syncthreads();
    if (!is_last) return false;
    __threadfence();
    return true;
}

// o += v · w, one chunk's partial output in a split merge; a chunk of weight 0 is skipped, not multiplied: an empty
// chunk's slot was never written and may hold anything (NaN · 0 would poison the sum).
__device__ __forceinline__ void add_weighted(float4& o, const float4 v, float w)
{
    if (w != 0.0f) { o.x += v.x * w; o.y += v.y * w; o.z += v.z * w; o.w += v.w * w; }
}

// The chunk weights e^(m_s - M) / L of one head's `live` chunks, live <= 128 (M: their largest max, L: Σ_s e^(m_s - M)
// l_s), computed by one warp from the head's (max, sum) pairs (its row of part_ml) into w[0, live), each pair read
// once, as one load kept in registers (four a lane). A chunk with l_s = 0 (nothing visible) weighs 0.
template <bool LOG2>
__device__ __forceinline__ void chunk_weights_once(const float2* pairs, float* w, int live, int lane)
{
    float2 x[4];
#pragma unroll
    for (int k = 0; k < 4; k++) x[k] = lane + 32 * k < live ? __ldcg(pairs + lane + 32 * k) : make_float2(neg_inf(), 0.0f);
    float m = neg_inf();
#pragma unroll
    for (int k = 0; k < 4; k++) if (lane + 32 * k < live) m = fmaxf(m, x[k].x);
    m = warp_max(m);
    float l = 0.0f, e[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
    {
        e[k] = x[k].y == 0.0f ? 0.0f : LOG2 ? exp2f(x[k].x - m) : expf(x[k].x - m);
        if (lane + 32 * k < live) l += x[k].y * e[k];
    }
    l = warp_sum(l);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) if (lane + 32 * k < live) w[lane + 32 * k] = e[k] * inv;
}

// chunk_weights_once for any number of chunks: more than 128 take two passes over the pairs (the maxima, then the
// pairs). A lane sums its chunks lane, lane + 32, ... in order either way, so the weights are the same bits.
template <bool LOG2>
__device__ __forceinline__ void chunk_weights(const float2* pairs, float* w, int live, int lane)
{
    if (live <= 128)
    {
        chunk_weights_once<LOG2>(pairs, w, live, lane);
        return;
    }
    float m = neg_inf();
    for (int s = lane; s < live; s += 32) m = fmaxf(m, __ldcg(&pairs[s].x));
    m = warp_max(m);
    float l = 0.0f;
    for (int s = lane; s < live; s += 32)
    {
        const float2 x = __ldcg(pairs + s);
        const float e = x.y == 0.0f ? 0.0f : LOG2 ? exp2f(x.x - m) : expf(x.x - m);
        w[s] = e;
        l += x.y * e;
    }
    l = warp_sum(l);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int s = lane; s < live; s += 32) w[s] *= inv;
}

// merge_splits' merge of the `live` chunks, in the last block (last_split).
template <bool LOG2 = false>
__device__ __forceinline__ void merge_chunks(const float* part_out, const float* part_ml, float* __restrict__ out,
    float* weights, int wstride, int G, int hd, int heads, int splits, int t, int kvh, int live)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const long head0 = (long)t * heads + (long)kvh * G; // first query head of the group, row t
    // Chunk weights per head, one warp per head...
    for (int g = warp; g < G; g += warps)
        chunk_weights<LOG2>(reinterpret_cast<const float2*>(part_ml) + (head0 + g) * splits, weights + g * wstride, live, lane);
    __syncthreads();
    // ...then every output element over the chunks' partial outputs: 16-byte loads where the head dimension allows, all
    // issued unconditionally (every chunk's slot is allocated) so many are in flight; an empty chunk's value is not added.
    if ((hd & 3) == 0)
    {
        const int h4 = hd / 4;
        for (int i = threadIdx.x; i < G * h4; i += blockDim.x)
        {
            const int g = i / h4, d4 = i % h4;
            const float4* po = reinterpret_cast<const float4*>(part_out + (head0 + g) * splits * hd) + d4;
            float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 16
            for (int s = 0; s < live; s++)
            {
                const float w = weights[g * wstride + s];
                const float4 v = __ldcg(po + (long)s * h4);
                add_weighted(o, v, w);
            }
            reinterpret_cast<float4*>(out + (head0 + g) * hd)[d4] = o;
        }
        return;
    }
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x)
    {
        const int g = i / hd, d = i % hd;
        const long base = (head0 + g) * splits;
        float acc = 0.0f;
#pragma unroll 8
        for (int s = 0; s < live; s++)
        {
            const float w = weights[g * wstride + s];
            const float v = __ldcg(part_out + (base + s) * hd + d);
            if (w != 0.0f) acc += v * w;
        }
        out[head0 * hd + i] = acc;
    }
}

// End of a split-K (flash-decoding) attention launch: block (split, kv head, row t) has written its chunk's unnormalized
// outputs part_out [row, head, split, hd] and (max, sum) part_ml; the last block of a (row, kv head) to finish (an atomic
// counter it resets for the next launch) merges the G heads' chunks: out = Σ_s e^(m_s - M) o_s / Σ_s e^(m_s - M) l_s
// (2^(m_s - M) when LOG2: the streaming kernels keep their scores in log2 units). `weights` is shared scratch of at least
// G·wstride floats (wstride >= splits). A chunk with l_s = 0 (nothing visible; its part_out may be unwritten) gets weight 0
// and its loaded output is not added; a head without any visible token outputs zeros. Every thread of the block must call it.
// live (0: splits): how many of the (row, kv head)'s first splits take part, when the later ones (past the head's last block)
// leave without calling this; those are neither counted nor read.
template <bool LOG2 = false>
__device__ __forceinline__ void merge_splits(const float* part_out, const float* part_ml, int* counters, float* __restrict__ out,
    float* weights, int wstride, int G, int hd, int heads, int kv_heads, int splits, int t, int kvh, int live = 0)
{
    if (live <= 0) live = splits;
    if (last_split(counters, t, kv_heads, kvh, live)) merge_chunks<LOG2>(part_out, part_ml, out, weights, wstride, G, hd, heads, splits, t, kvh, live);
}

// merge_splits for a block of 128 threads with G and the head dimension HD constants (the streaming and the pipelined
// decode kernels): the last block of a (row, KV head) issues the loads of its first EARLY chunks' partial outputs before
// the chunk weights exist (the loads do not depend on them), then computes the weights (chunk_weights_once, the pairs read
// once) while they are in flight. merge_chunks waits for the weights and then for every 16 outputs in turn: a head's 33
// chunks (the streaming kernel at batch 1) were five round trips to L2 after the counter's, 50-66 (the pipelined kernel)
// six, on the launch's critical path, before the weights read each pair once. More than 128 live chunks take
// merge_chunks. Same arithmetic in the same order as merge_splits. claims: last_split's (the pipelined kernel's block
// claims share the counter). Returns whether this block merged.
template <int G, int HD, int EARLY, bool LOG2>
__device__ __forceinline__ bool merge_splits_early(const float* part_out, const float* part_ml, int* counters, float* __restrict__ out,
    float* weights, int wstride, int splits, int heads, int kv_heads, int t, int kvh, int live, bool claims = false)
{
    constexpr int H4 = HD / 4, ITEMS = (G * H4 + 127) / 128;
    if (!last_split(counters, t, kv_heads, kvh, live, claims)) return false;
    if (live > 128)
    {
        merge_chunks<LOG2>(part_out, part_ml, out, weights, wstride, G, HD, heads, splits, t, kvh, live);
        return true;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long head0 = (long)t * heads + (long)kvh * G;
    // The thread's output items (float4 d4 of head g): threadIdx.x + 128·k.
    float4 early[ITEMS][EARLY];
#pragma unroll
    for (int k = 0; k < ITEMS; k++)
    {
        const int i = threadIdx.x + 128 * k;
        const float4* po = reinterpret_cast<const float4*>(part_out + (head0 + i / H4) * splits * HD) + i % H4;
#pragma unroll
        for (int s = 0; s < EARLY; s++)
            if (i < G * H4 && s < live) early[k][s] = __ldcg(po + (long)s * H4);
    }
    // Chunk weights per head, one warp per head, from the pairs read once (live <= 128 here).
    for (int g = warp; g < G; g += 4)
        chunk_weights_once<LOG2>(reinterpret_cast<const float2*>(part_ml) + (head0 + g) * splits, weights + g * wstride, live, lane);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < ITEMS; k++)
    {
        const int i = threadIdx.x + 128 * k;
        if (i >= G * H4) continue;
        const int g = i / H4;
        const float4* po = reinterpret_cast<const float4*>(part_out + (head0 + g) * splits * HD) + i % H4;
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int s = 0; s < EARLY; s++)
        {
            const float w = s < live ? weights[g * wstride + s] : 0.0f;
            const float4 v = early[k][s];
            add_weighted(o, v, w);
        }
#pragma unroll 16
        for (int s = EARLY; s < live; s++)
        {
            const float w = weights[g * wstride + s];
            const float4 v = __ldcg(po + (long)s * H4);
            add_weighted(o, v, w);
        }
        reinterpret_cast<float4*>(out + head0 * HD)[i] = o;
    }
    return true;
}
