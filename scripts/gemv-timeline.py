#!/usr/bin/env python3
# A timeline build of the batch products (gemv_mma) for `KvSharp.GpuTests bench-gemv`, which summarizes its records:
#   scripts/gemv-timeline.py src/KvSharp/Compute/Cuda/Kernels/gemv.cu OUT_DIR/gemv.cu
# Thread 0 of every grid block writes 8 words past the product's outputs, at (unsigned long long*)(y + 8 * rows) +
# 8 * blockIdx.x: %globaltimer at entry, after griddepcontrol.wait, after the first step's mma (its weights and
# activations arrived), at the loop's end and after the reduction, then %smid, the clock64 cycles from entry to end, 1.
# bench-gemv leaves room for them (y + 8 * rows is past every batch row's output). The app reads OUT_DIR/gemv.cu instead
# of the embedded file only with a kernel-directory override (KVSHARP_KERNEL_DIR, a temporary patch applied for the
# publish, not in the repository: docs/benchmarks.md, "the batch products' fixed cost a launch").
import sys

source, target = sys.argv[1], sys.argv[2]
s = open(source).read()


def replace(old, new):
    global s
    if old not in s:
        sys.exit(f"gemv-timeline: '{old.strip()[:60]}' not found in {source}: the kernel changed, update this script")
    s = s.replace(old, new, 1)


replace("template <bool BF16, int MODE, bool NORM>\n__device__ __forceinline__ void gemv_mma(",
        "__device__ __forceinline__ unsigned long long gtime() { unsigned long long t; asm volatile(\"mov.u64 %0, %globaltimer;\" : \"=l\"(t)); return t; }\n"
        "template <bool BF16, int MODE, bool NORM>\n__device__ __forceinline__ void gemv_mma(")
replace("    constexpr int D = MMA_RING;\n",
        "    constexpr int D = MMA_RING;\n    const unsigned long long tr0 = gtime(); const long long ck0 = clock64(); unsigned long long tr2 = 0;\n")
replace("    pdl_wait();\n\n    float c[4]", "    pdl_wait();\n    const unsigned long long tr1 = gtime();\n\n    float c[4]")
replace("            step(ring[i], xs[i][0], xs[i][1], s0 + i);\n",
        "            step(ring[i], xs[i][0], xs[i][1], s0 + i);\n            if (i == 0 && s0 == 0) tr2 = gtime();\n")
replace("    pdl_trigger();\n", "    const unsigned long long tr3 = gtime();\n    pdl_trigger();\n")
replace("    const float v[4] = {",
        "    if (threadIdx.x == 0)\n    {\n        unsigned smid; asm volatile(\"mov.u32 %0, %smid;\" : \"=r\"(smid));\n"
        "        unsigned long long* T = reinterpret_cast<unsigned long long*>(y + 8L * rows) + 8L * blockIdx.x;\n"
        "        const unsigned long long tr4 = gtime();\n"
        "        T[0] = tr0; T[1] = tr1; T[2] = tr2; T[3] = tr3; T[4] = tr4; T[5] = smid; T[6] = (unsigned long long)(clock64() - ck0); T[7] = 1;\n    }\n"
        "    const float v[4] = {")
open(target, "w").write(s)
