#!/usr/bin/env python3
# A timeline of whole decode steps: when each kernel launch's blocks became resident, returned from griddepcontrol.wait
# and exited, for every kernel of every module, in the real (graph, programmatic-launch) execution; and its summary:
#   scripts/step-timeline.py build src/KvSharp/Compute/Cuda/Kernels OUT_DIR [--paged-batch1 | --paged-batch-folded] [MODULE=PRINT_AT ...]
#   scripts/step-timeline.py summarize LOG...
# build writes patched copies of every kernel file and header to OUT_DIR. common.cuh gains a scope object that every
# __global__ function opens first (its destructor runs on every return path): thread 0 of each grid block keeps the
# block's entry time and the first return of pdl_wait (both %globaltimer), and at exit folds them into its launch's
# record (min entry, min and max wait return, max exit) with 64-bit atomics. A module's launches are numbered in the
# order they complete (the last block of a launch, found by a counter, closes its record and opens the next): kernels
# call pdl_wait in every thread before they exit (common.cuh), so a launch's blocks exit only after the module's
# previous launch has completed. Each module keeps its last TL_RING (512) records in a ring and prints the ring (device
# printf, "TLS ..." lines) when its launch PRINT_AT completes, nothing before: the default PRINT_AT of a module is 45
# steps of bench-paged's Llama-3.1-8B (32 layers) at that module's launches a step (gemv.cu 129, paged_cache.cu 32,
# the attention files 32, elementwise.cu 2, sampling.cu 2; with --paged-batch1, a batch-1 paged step's: gemv.cu 65, as
# its QKV product is fused into paged_cache.cu's append and, since stop 27, its output product into paged_merge.cu's
# merge; with --paged-batch-folded, a batch step's over the paged cache with its append folded into the products (since
# stop 33, CudaPagedKernels.FuseBatchAppend): gemv.cu 65 and paged_cache.cu 64, the QKV and attention-output products
# being paged_cache.cu's); pass MODULE=N to change one (e.g. gemv.cu=3000). Only
# thread 0's exit is timed: a kernel whose thread 0 leaves early reads short. The app reads OUT_DIR's files instead of
# the embedded ones only with a kernel-directory override that covers headers too (KVSHARP_KERNEL_DIR, a temporary
# patch applied for the publish, not in the repository). summarize merges the modules' records by time, takes as its
# window the span of the module whose ring covers the least time (gemv.cu's, ~4 steps), and prints per kernel name its
# launches' wait-to-exit time and the gap before it (from the previous launch's exit on the stream to its own wait
# return), then the window's first launches one by one.
import glob
import os
import re
import statistics
import sys

STEP_LAUNCHES = {"gemv.cu": 129, "paged_cache.cu": 32, "paged_attention_tc.cu": 32, "paged_attention.cu": 32,
                 "paged_attention_vidkv.cu": 32, "paged_merge.cu": 32, "attention.cu": 32, "elementwise.cu": 2, "sampling.cu": 2}

SCOPE = r'''
// ---- step timeline (scripts/step-timeline.py): not for production ----
#ifndef TL_RING
#define TL_RING 512u
#endif
#ifndef TL_PRINT_AT
#define TL_PRINT_AT 0xffffffffu
#endif
__device__ __forceinline__ unsigned long long tl_now() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
__device__ __forceinline__ bool tl_t0() { return threadIdx.x + threadIdx.y + threadIdx.z == 0; }
__shared__ unsigned long long tl_entry_s, tl_wait_s;
struct TlRec { const char* name; unsigned long long entry, wait_lo, wait_hi, exit; unsigned grid, seq; };
__device__ TlRec tl_rec[TL_RING];
__device__ unsigned tl_seq, tl_done;
__device__ __noinline__ void tl_exit(const char* name)
{
    const unsigned long long t = tl_now();
    const unsigned total = gridDim.x * gridDim.y * gridDim.z;
    const unsigned seq = *(volatile unsigned*)&tl_seq;
    TlRec& r = tl_rec[seq % TL_RING];
    atomicMin(&r.entry, tl_entry_s);
    if (tl_wait_s != 0) { atomicMin(&r.wait_lo, tl_wait_s); atomicMax(&r.wait_hi, tl_wait_s); }
    atomicMax(&r.exit, t);
    r.name = name;
    r.grid = total;
    r.seq = seq;
    __threadfence();
    if (atomicAdd(&tl_done, 1u) != total - 1) return;
    tl_done = 0;
    if (seq == TL_PRINT_AT)
        for (unsigned k = 1; k <= TL_RING; k++)
        {
            const TlRec& p = tl_rec[(seq + k) % TL_RING];
            if (p.name != nullptr && p.exit != 0)
                printf("TLS %s %s %u %u %llu %llu %llu %llu\n", TL_MODULE, p.name, p.seq, p.grid, p.entry, p.wait_lo == ~0ull ? 0ull : p.wait_lo, p.wait_hi, p.exit);
        }
    TlRec& n = tl_rec[(seq + 1) % TL_RING];
    n.name = nullptr; n.entry = ~0ull; n.wait_lo = ~0ull; n.wait_hi = 0; n.exit = 0;
    __threadfence();
    atomicAdd(&tl_seq, 1u);
}
struct TlScope
{
    const char* name;
    __device__ __forceinline__ TlScope(const char* n) : name(n) { if (tl_t0()) { tl_entry_s = tl_now(); tl_wait_s = 0; } }
    __device__ __forceinline__ ~TlScope() { if (tl_t0()) tl_exit(name); }
};
// ---- end of the step timeline's scope ----
'''


def patch_common(text):
    anchor = "typedef unsigned short u16;\n"
    if text.count(anchor) != 1:
        sys.exit("step-timeline: common.cuh changed (no single 'typedef unsigned short u16;'): update this script")
    text = text.replace(anchor, anchor + SCOPE, 1)
    wait = '    asm volatile("griddepcontrol.wait;" ::: "memory");\n'
    if text.count(wait) != 1:
        sys.exit("step-timeline: common.cuh's pdl_wait changed: update this script")
    return text.replace(wait, wait + "    if (tl_t0() && tl_wait_s == 0) tl_wait_s = tl_now();\n", 1)


def patch_kernels(text, name):
    """Opens a TlScope as the first statement of every __global__ function body (also inside macro definitions)."""
    out, pos, count = [], 0, 0
    for m in re.finditer(r"__global__", text):
        if m.start() < pos:
            continue
        # the parameter list's closing parenthesis, then the body's opening brace
        i = text.index("(", m.end())
        # skip __launch_bounds__(...) and similar attributes before the name's parameter list
        while True:
            depth, j = 0, i
            while True:
                if text[j] == "(":
                    depth += 1
                elif text[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            k = j + 1
            while text[k] in " \t\\\n":
                k += 1
            if text[k] == "{":
                break
            if text[k] == ";":  # a declaration, not a definition
                k = -1
                break
            i = text.index("(", k)
        if k < 0:
            continue
        out.append(text[pos:k + 1])
        out.append(" TlScope tl_scope_(__func__);")
        pos = k + 1
        count += 1
    out.append(text[pos:])
    if count == 0:
        print(f"step-timeline: no __global__ definition in {name}", file=sys.stderr)
    return "".join(out), count


# A batch-1 step over the paged cache: the QKV product is fused with the append (paged_cache.cu), so gemv.cu runs the
# attention output, gate/up and down a layer plus the head (3 · 32 + 1).
STEP_LAUNCHES_PAGED_BATCH1 = dict(STEP_LAUNCHES, **{"gemv.cu": 65})
# A batch step over the paged cache with the append folded (stop 33): paged_cache.cu runs the QKV product and the
# attention-output product a layer, gemv.cu gate/up and down a layer plus the head.
STEP_LAUNCHES_PAGED_BATCH_FOLDED = dict(STEP_LAUNCHES, **{"gemv.cu": 65, "paged_cache.cu": 64})
STEP_LAYOUTS = {"--paged-batch1": STEP_LAUNCHES_PAGED_BATCH1, "--paged-batch-folded": STEP_LAUNCHES_PAGED_BATCH_FOLDED}


def build(kernels, out_dir, overrides, layout=STEP_LAUNCHES):
    os.makedirs(out_dir, exist_ok=True)
    print_at = {m: n * 45 for m, n in layout.items()}
    print_at.update(overrides)
    for path in sorted(glob.glob(f"{kernels}/*.cu*")):
        name = os.path.basename(path)
        text = open(path).read()
        if name == "common.cuh":
            text = patch_common(text)
        elif name.endswith(".cu"):
            text, n = patch_kernels(text, name)
            at = print_at.get(name, 45 * 32)
            text = f"#define TL_PRINT_AT {at}u\n#define TL_MODULE \"{name}\"\n" + text
            print(f"{name}: {n} kernels scoped, ring printed at launch {at}")
        open(f"{out_dir}/{name}", "w").write(text)


def summarize(paths):
    recs = []
    for path in paths:
        for line in open(path, errors="replace"):
            if not line.startswith("TLS "):
                continue
            f = line.split()
            recs.append({"module": f[1], "name": f[2], "seq": int(f[3]), "grid": int(f[4]), "entry": int(f[5]), "wait": int(f[6]),
                         "wait_hi": int(f[7]), "exit": int(f[8]), "file": path})
    if not recs:
        sys.exit("step-timeline: no TLS records")
    for path in sorted({r["file"] for r in recs}):
        rs = [r for r in recs if r["file"] == path]
        modules = {}
        for r in rs:
            modules.setdefault(r["module"], []).append(r)
        # The window: the span of the module with the most records a unit of time (its ring covers the fewest steps).
        span = {m: (min(r["entry"] for r in v), max(r["exit"] for r in v)) for m, v in modules.items()}
        densest = min(span, key=lambda m: span[m][1] - span[m][0])
        lo, hi = span[densest]
        win = sorted((r for r in rs if r["entry"] >= lo and r["exit"] <= hi), key=lambda r: (r["wait"] or r["entry"]))
        present = sorted({r["module"] for r in win})
        print(f"== {path}: {len(rs)} records; window = {densest}'s span ({(hi - lo) / 1000:.1f} us, {len(win)} launches); "
              f"modules in it: {', '.join(present)}; absent: {', '.join(sorted(set(modules) - set(present))) or 'none'}")
        if len(win) < 2:
            continue
        stats = {}
        prev = None
        for r in win:
            start = r["wait"] or r["entry"]
            s = stats.setdefault(r["name"], {"busy": [], "gap": [], "resident": []})
            s["busy"].append((r["exit"] - start) / 1000)
            s["resident"].append((start - r["entry"]) / 1000)
            if prev is not None:
                s["gap"].append((start - prev["exit"]) / 1000)
            prev = r
        print(f"  {'kernel':52s} {'n':>4s} {'wait->exit us':>14s} {'gap before us':>14s} {'resident before wait us':>24s}")
        for name, s in sorted(stats.items(), key=lambda kv: -sum(kv[1]["busy"])):
            gap = statistics.median(s["gap"]) if s["gap"] else float("nan")
            print(f"  {name[:52]:52s} {len(s['busy']):4d} {statistics.median(s['busy']):14.2f} {gap:14.2f} {statistics.median(s['resident']):24.2f}")
        t0 = win[0]["wait"] or win[0]["entry"]
        print(f"  the window's first 24 launches (us from the first one's wait return):")
        for r in win[:24]:
            print(f"    {r['name'][:52]:52s} grid {r['grid']:6d} resident {(r['entry'] - t0) / 1000:9.2f} wait {((r['wait'] or r['entry']) - t0) / 1000:9.2f}"
                  f" to {((r['wait_hi'] or r['entry']) - t0) / 1000:9.2f} exit {(r['exit'] - t0) / 1000:9.2f}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "build":
        rest = [a for a in sys.argv[4:] if a not in STEP_LAYOUTS]
        layouts = [STEP_LAYOUTS[a] for a in sys.argv[4:] if a in STEP_LAYOUTS]
        if len(layouts) > 1:
            sys.exit("--paged-batch1 and --paged-batch-folded: one step layout at most")
        build(sys.argv[2], sys.argv[3], {a.split("=")[0]: int(a.split("=")[1]) for a in rest}, layouts[0] if layouts else STEP_LAUNCHES)
    elif len(sys.argv) >= 3 and sys.argv[1] == "summarize":
        summarize(sys.argv[2:])
    else:
        sys.exit("usage: step-timeline.py build KERNELS OUT_DIR [--paged-batch1 | --paged-batch-folded] [MODULE=PRINT_AT ...] | summarize LOG...")
