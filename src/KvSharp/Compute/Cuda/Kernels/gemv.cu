// The matrix-vector kernels of decode: the CUDA-core template of gemv.cuh instantiated per weight type and row count,
// and the tensor-core products of 2-8 rows (gemv_mma.cuh).
#include "gemv.cuh"

#define GEMV_ARGS(W) const W::T* w, const float* x, float* y, const float* nw, float eps, int rows, int cols, int ksplit
#define GEMV(NAME, W, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_##NT(GEMV_ARGS(W)) { gemv<W, NT, 0, false>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_norm_##NT(GEMV_ARGS(W)) { gemv<W, NT, 0, true>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_acc_##NT(GEMV_ARGS(W)) { gemv<W, NT, 1, false>(w, x, y, nw, eps, rows, cols, ksplit); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu_##NT(GEMV_ARGS(W)) { gemv<W, NT, 2, false>(w, x, y, nw, eps, rows, cols, 1); } \
    extern "C" __global__ void __launch_bounds__(256) NAME##_swiglu_norm_##NT(GEMV_ARGS(W)) { gemv<W, NT, 2, true>(w, x, y, nw, eps, rows, cols, 1); }
// The fused QKV + RoPE + cache append of one decode row (MODE 3, attention norm fused).
#define GEMV_QKV_ROPE(NAME, W) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_qkv_rope_norm_1(const W::T* w, const float* x, const float* nw, float eps, int rows, \
        int cols, float* q_out, u16* kc, u16* vc, const float* inv_freq, const int* pos, int heads, int kv_heads, int hd, int capacity, int interleaved) \
    { gemv<W, 1, 3, true>(w, x, nullptr, nw, eps, rows, cols, 1, RopeAppend{ q_out, kc, vc, inv_freq, pos, heads, kv_heads, hd, capacity, interleaved }); }
// The output head of decode rows with the final norm, folding the greedy choice into best[t] (MODE 4).
#define GEMV_ARGMAX(NAME, W, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME##_argmax_norm_##NT(const W::T* w, const float* x, float* y, const float* nw, float eps, \
        int rows, int cols, unsigned long long* best) \
    { gemv<W, NT, 4, true>(w, x, y, nw, eps, rows, cols, 1, RopeAppend(), best); }
#define GEMV_ALL(NAME, W) GEMV_ARGMAX(NAME, W, 1) GEMV_ARGMAX(NAME, W, 2) GEMV_ARGMAX(NAME, W, 3) GEMV_ARGMAX(NAME, W, 4) GEMV_ARGMAX(NAME, W, 5) \
    GEMV_ARGMAX(NAME, W, 6) GEMV_ARGMAX(NAME, W, 7) GEMV_ARGMAX(NAME, W, 8) GEMV_QKV_ROPE(NAME, W) GEMV(NAME, W, 1) GEMV(NAME, W, 2) GEMV(NAME, W, 3) GEMV(NAME, W, 4) GEMV(NAME, W, 5) GEMV(NAME, W, 6) GEMV(NAME, W, 7) GEMV(NAME, W, 8)

GEMV_ALL(gemv_f32, WeightF32)
GEMV_ALL(gemv_bf16, WeightBF16)
GEMV_ALL(gemv_f16, WeightF16)

#include "gemv_mma.cuh"

// The normed products: 3 blocks of 256 threads a multiprocessor (at most 85 registers), the QKV product's 384 blocks
// (Llama-3.1-8B) in one wave. The others: a deeper ring at 2 blocks (at most 128 registers; gemv_mma.cuh, MMA_RING_DEEP).
#define GEMV_MMA_ARGS const u16* w, const float* x, float* y, const float* nw, float eps, int rows, int cols, int nt
// A product without a norm on the deeper ring (MODE, 16-bit activations or not).
#define GEMV_MMA_DEEP(NAME, BF, MODE, H16) \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(GEMV_MMA_ARGS) \
    { gemv_mma<BF, MODE, false, H16, int, false, MMA_RING_DEEP>(w, x, y, nw, eps, rows, cols, nt); }
#define GEMV_MMA(NAME, BF) \
    GEMV_MMA_DEEP(NAME, BF, 0, false) \
    extern "C" __global__ void __launch_bounds__(256, 3) NAME##_norm(GEMV_MMA_ARGS) { gemv_mma<BF, 0, true>(w, x, y, nw, eps, rows, cols, nt); } \
    GEMV_MMA_DEEP(NAME##_acc, BF, 1, false) \
    GEMV_MMA_DEEP(NAME##_acc_h16, BF, 1, true) \
    GEMV_MMA_DEEP(NAME##_swiglu, BF, 2, false) \
    extern "C" __global__ void __launch_bounds__(256, 3) NAME##_swiglu_norm(GEMV_MMA_ARGS) { gemv_mma<BF, 2, true>(w, x, y, nw, eps, rows, cols, nt); } \
    extern "C" __global__ void __launch_bounds__(256, 3) NAME##_swiglu_norm_h16(GEMV_MMA_ARGS) { gemv_mma<BF, 2, true, true>(w, x, y, nw, eps, rows, cols, nt); } \
    extern "C" __global__ void __launch_bounds__(256, 3) NAME##_argmax_norm(GEMV_MMA_ARGS, unsigned long long* best) \
    { gemv_mma<BF, 4, true>(w, x, y, nw, eps, rows, cols, nt, best); }
GEMV_MMA(gemv_mma_bf16, true)
GEMV_MMA(gemv_mma_f16, false)
