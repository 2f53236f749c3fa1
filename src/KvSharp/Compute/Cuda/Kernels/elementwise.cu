// Row-wise and element-wise kernels of the Llama forward pass. Activations are float32.
// Every kernel starts with pdl_wait (see common.cuh): all launches may use programmatic dependent launch.
#include "common.cuh"

// out[t, :] = table[tokens[t], :] widened to float (one block per token).
template <class W>
__device__ void embed(const typename W::T* table, const int* tokens, float* out, int cols)
{
    pdl_wait();
    pdl_trigger();
    const long row = tokens[blockIdx.x];
    for (int i = threadIdx.x; i < cols; i += blockDim.x) out[(long)blockIdx.x * cols + i] = W::get(table, row * cols + i);
}
extern "C" __global__ void embed_f32(const float* t, const int* tok, float* o, int c) { embed<WeightF32>(t, tok, o, c); }
extern "C" __global__ void embed_bf16(const u16* t, const int* tok, float* o, int c) { embed<WeightBF16>(t, tok, o, c); }
extern "C" __global__ void embed_f16(const u16* t, const int* tok, float* o, int c) { embed<WeightF16>(t, tok, o, c); }

// y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w (one block per row; y may be x).
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* y, int cols, float eps)
{
    pdl_wait();
    pdl_trigger();
    const float* xr = x + (long)blockIdx.x * cols;
    float* yr = y + (long)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) { float v = xr[i]; ss += v * v; }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// SwiGLU over the rows of a fused gate/up product gu [rows, 2 * ffn] (gate columns first):
// out[t, i] = silu(gu[t, i]) * gu[t, ffn + i].
extern "C" __global__ void swiglu_rows(const float* gu, float* out, int ffn, long n)
{
    pdl_wait();
    pdl_trigger();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    {
        const long t = i / ffn, c = i % ffn;
        const float g = gu[t * 2 * ffn + c];
        out[i] = g / (1.0f + expf(-g)) * gu[t * 2 * ffn + ffn + c];
    }
}

// x[r, c] += bias[c].
extern "C" __global__ void add_bias(float* x, const float* bias, int cols, long n)
{
    pdl_wait();
    pdl_trigger();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] += bias[i % cols];
}

// Narrowing copies for cuBLAS operands.
extern "C" __global__ void to_bf16(const float* x, u16* y, long n)
{
    pdl_wait();
    pdl_trigger();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) y[i] = f32_to_bf16(x[i]);
}
extern "C" __global__ void to_f16(const float* x, u16* y, long n)
{
    pdl_wait();
    pdl_trigger();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) y[i] = f32_to_f16(x[i]);
}

// After the fused QKV product qkv [n, (heads + 2 kv_heads) hd] (q heads, k heads, v heads): per
// head, the optional per-head RMSNorm (Qwen3's q/k norm), then RoPE at position *pos + t
// (interleaved: pairs (2i, 2i+1), else (i, i + hd/2); inv_freq holds hd/2 frequencies with any
// Llama-3 scaling applied). Rotated queries go to q_out [n, heads, hd]; rotated keys and the values
// go as float16 into one layer's cache [kv_heads, capacity, hd]. One block per (row, q or k head).
// With seq_stride != 0 the rows are separate sequences (batch decode): row t writes the cache
// t * seq_stride elements further, at position pos[t].
extern "C" __global__ void qkv_rope_append(const float* qkv, float* q_out, const float* q_norm, const float* k_norm, const float* inv_freq,
    u16* kc, u16* vc, int heads, int kv_heads, int hd, int capacity, const int* pos, int interleaved, float eps, long seq_stride)
{
    pdl_wait();
    pdl_trigger();
    const int per_row = heads + kv_heads;
    const int t = blockIdx.x / per_row, h = blockIdx.x % per_row;
    const long stride = (long)(heads + 2 * kv_heads) * hd;
    const float* src = qkv + t * stride + (long)h * hd; // k heads follow the q heads, so h * hd finds either
    const bool is_q = h < heads;
    const float* nw = is_q ? q_norm : k_norm;
    float inv = 1.0f;
    if (nw != nullptr)
    {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) ss += src[i] * src[i];
        ss = block_sum(ss);
        inv = 1.0f / sqrtf(ss / hd + eps);
    }
    const bool batch = seq_stride != 0;
    const int p = batch ? pos[t] : *pos + t;
    if (batch) { kc += t * seq_stride; vc += t * seq_stride; }
    const int half = hd / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x)
    {
        int i0, i1;
        rope_channels(i, hd, interleaved, i0, i1);
        float x0 = src[i0], x1 = src[i1];
        if (nw != nullptr) { x0 = x0 * inv * nw[i0]; x1 = x1 * inv * nw[i1]; }
        float y0, y1;
        rope_rotate(p, inv_freq[i], x0, x1, y0, y1);
        if (is_q)
        {
            float* dst = q_out + ((long)t * heads + h) * hd;
            dst[i0] = y0;
            dst[i1] = y1;
        }
        else
        {
            u16* dst = kc + ((long)(h - heads) * capacity + p) * hd;
            dst[i0] = f32_to_f16(y0);
            dst[i1] = f32_to_f16(y1);
        }
    }
    if (!is_q)
    {
        const int kh = h - heads;
        const float* vsrc = qkv + t * stride + (long)(heads + kv_heads + kh) * hd;
        u16* dst = vc + ((long)kh * capacity + p) * hd;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) dst[i] = f32_to_f16(vsrc[i]);
    }
}

// Greedy pick over each row of logits (one block per row t): the first index of the largest value (as
// the CPU sampler does). Writes it to next[t] and to history[t * history_stride + pos[t]], then advances
// pos[t] by advance (a decode step's bookkeeping; rows are the sequences of a batch).
// The greedy token of each row t from the key the output head folded into best[t] (gemv.cu, MODE 4): next[t],
// history[t * history_stride + pos[t]], pos[t] += advance, and best[t] back to 0 for the next step.
extern "C" __global__ void argmax_finish(unsigned long long* best, int rows, int* next, int* history, int* pos, int advance, long history_stride)
{
    pdl_wait();
    pdl_trigger();
    const int t = threadIdx.x;
    if (t >= rows) return;
    const unsigned long long key = best[t];
    const int idx = key == 0ull ? 0 : (int)(0xffffffffu - (unsigned)(key & 0xffffffffull)); // all NaN: 0, as argmax
    best[t] = 0ull;
    next[t] = idx;
    if (history) history[t * history_stride + pos[t]] = idx;
    pos[t] += advance;
}

extern "C" __global__ void argmax(const float* logits, int n, int* next, int* history, int* pos, int advance, long history_stride)
{
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x;
    logits += (long)t * n;
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    float v = neg_inf();
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
    {
        const float x = logits[i];
        if (x > v) { v = x; idx = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (best_v[w] > v || (best_v[w] == v && best_i[w] < idx)) { v = best_v[w]; idx = best_i[w]; }
        if (idx == 0x7fffffff) idx = 0; // all NaN: keep the CPU sampler's answer for that case
        next[t] = idx;
        if (history) history[t * history_stride + pos[t]] = idx;
        pos[t] += advance;
    }
}

// Deterministic pseudo-random float16 values in [-scale, scale): fills a cache for decode benchmarks
// without running a long prefill (the values only need to be realistic, not meaningful).
extern "C" __global__ void fill_random_f16(u16* p, long n, unsigned seed, float scale)
{
    pdl_wait();
    pdl_trigger();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    {
        unsigned x = (unsigned)i * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        p[i] = f32_to_f16(((x >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale);
    }
}
