// Row-wise and element-wise kernels of the Llama forward pass. Activations are float32.
#include "common.cuh"

// out[t, :] = table[tokens[t], :] widened to float (one block per token).
template <class W>
__device__ void embed(const typename W::T* table, const int* tokens, float* out, int cols)
{
    const long row = tokens[blockIdx.x];
    for (int i = threadIdx.x; i < cols; i += blockDim.x) out[(long)blockIdx.x * cols + i] = W::get(table, row * cols + i);
}
extern "C" __global__ void embed_f32(const float* t, const int* tok, float* o, int c) { embed<WeightF32>(t, tok, o, c); }
extern "C" __global__ void embed_bf16(const u16* t, const int* tok, float* o, int c) { embed<WeightBF16>(t, tok, o, c); }
extern "C" __global__ void embed_f16(const u16* t, const int* tok, float* o, int c) { embed<WeightF16>(t, tok, o, c); }

// y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w (one block per row; y may be x).
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* y, int cols, float eps)
{
    const float* xr = x + (long)blockIdx.x * cols;
    float* yr = y + (long)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) { float v = xr[i]; ss += v * v; }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// Rotates each head of x [n, heads, hd] (row t at position *pos + t). inv_freq holds hd/2
// frequencies (Llama-3 scaling already applied). interleaved: pairs (2i, 2i+1), else (i, i + hd/2).
extern "C" __global__ void rope(float* x, const float* inv_freq, int heads, int hd, const int* pos, int interleaved)
{
    const int row = blockIdx.x;
    const int t = row / heads;
    float* h = x + (long)row * hd;
    const int half = hd / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x)
    {
        const float angle = (float)(*pos + t) * inv_freq[i];
        const float c = cosf(angle), s = sinf(angle);
        const int i0 = interleaved ? 2 * i : i;
        const int i1 = interleaved ? 2 * i + 1 : i + half;
        const float x0 = h[i0], x1 = h[i1];
        h[i0] = x0 * c - x1 * s;
        h[i1] = x0 * s + x1 * c;
    }
}

// gate = silu(gate) * up.
extern "C" __global__ void swiglu(float* gate, const float* up, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// x += y.
extern "C" __global__ void add(float* x, const float* y, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] += y[i];
}

// x[r, c] += bias[c].
extern "C" __global__ void add_bias(float* x, const float* bias, int cols, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] += bias[i % cols];
}

// Narrowing copies for cuBLAS operands.
extern "C" __global__ void to_bf16(const float* x, u16* y, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) y[i] = f32_to_bf16(x[i]);
}
extern "C" __global__ void to_f16(const float* x, u16* y, long n)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) y[i] = f32_to_f16(x[i]);
}

// Writes k, v [n, kv_heads, hd] as float16 into one layer's cache [kv_heads, capacity, hd] at positions *pos + t.
extern "C" __global__ void kv_append(const float* k, const float* v, u16* kc, u16* vc, int n, int kv_heads, int hd, int capacity, const int* pos)
{
    const long total = (long)n * kv_heads * hd;
    const int p0 = *pos;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x)
    {
        const int d = (int)(i % hd);
        const int h = (int)((i / hd) % kv_heads);
        const int t = (int)(i / ((long)hd * kv_heads));
        const long dst = ((long)h * capacity + p0 + t) * hd + d;
        kc[dst] = f32_to_f16(k[i]);
        vc[dst] = f32_to_f16(v[i]);
    }
}

// Greedy pick over one row of logits: the first index of the largest value (as the CPU sampler does).
// Writes it to next[0] and to history[*pos], then advances *pos by advance (a decode step's bookkeeping).
extern "C" __global__ void argmax(const float* logits, int n, int* next, int* history, int* pos, int advance)
{
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
        next[0] = idx;
        if (history) history[*pos] = idx;
        *pos += advance;
    }
}

// Deterministic pseudo-random float16 values in [-scale, scale): fills a cache for decode benchmarks
// without running a long prefill (the values only need to be realistic, not meaningful).
extern "C" __global__ void fill_random_f16(u16* p, long n, unsigned seed, float scale)
{
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    {
        unsigned x = (unsigned)i * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        p[i] = f32_to_f16(((x >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale);
    }
}

extern "C" __global__ void set_int(int* p, int value) { *p = value; }
