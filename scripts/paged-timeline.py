#!/usr/bin/env python3
# A timeline build of the pipelined paged attention (paged_attn_p_*, paged_attention_tc.cu) and the summary of its records:
#   scripts/paged-timeline.py build src/KvSharp/Compute/Cuda/Kernels OUT_DIR [FIRST COUNT]
#   scripts/paged-timeline.py summarize LOG...
# build writes OUT_DIR/paged_attention_tc.cu, whose grid blocks record one line each ("TL ...") for the module's launches
# FIRST .. FIRST + COUNT - 1 (default 600 and 2: bench-paged's warm-up is 16 steps of 32 layers, so these are
# steady-state launches of its first timed repetition) into a device array, which the first block of launch FIRST + COUNT
# prints (device printf): no printf runs during a recorded launch (stop 22's build printed from each unit as it ended,
# while later units still ran, and its merge and tail times may carry that printing). Recorded: %globaltimer at entry,
# after griddepcontrol.wait, after the split's descriptors are staged, each warp's first block arrived and its block
# loop's end, after the partial output is stored, after the merge (merge_splits_early), plus %smid, the unit's (row, KV head,
# split, blocks, live splits) and whether it merged.
# The app reads OUT_DIR/paged_attention_tc.cu instead of the embedded file only with a kernel-directory override
# (KVSHARP_KERNEL_DIR, a temporary patch applied for the publish, not in the repository). Each module (format-specialized
# build) counts its own launches, so run one bench row per process. summarize prints, per launch, the phases' times from
# the launch's first griddepcontrol.wait return (percentiles over units), the SMs' ends and the merge's share.
import re
import statistics
import sys


def build(kernels, out_dir, first, count):
    src = open(f"{kernels}/paged_attention_tc.cu").read()
    s = src

    def replace(old, new):
        nonlocal s
        if s.count(old) != 1:
            sys.exit(f"paged-timeline: '{old.strip()[:70]}' found {s.count(old)} times: the kernel changed, update this script")
        s = s.replace(old, new, 1)

    header = (
        "__device__ __forceinline__ unsigned long long tl_time() { unsigned long long t; asm volatile(\"mov.u64 %0, %globaltimer;\" : \"=l\"(t)); return t; }\n"
        "__shared__ unsigned long long tl_s[12], tl_fw[4], tl_le[4];\n"
        "__device__ unsigned tl_launch, tl_done;\n"
        f"#define TL_UNITS 2048u\n#define TL_FIRST {first}u\n#define TL_COUNT {count}u\n"
        "__device__ unsigned long long tl_rec[TL_COUNT * TL_UNITS * 22];\n")
    replace("template <int G, int VG, bool STEAL>\n__device__ __forceinline__ void paged_attention_pipe(",
            header + "template <int G, int VG, bool STEAL>\n__device__ __forceinline__ void paged_attention_pipe(")
    # wait returned: after the one griddepcontrol.wait a launch runs (before the split, or after it with tables_early)
    replace("    if (!early) pdl_wait(); // the tables, the appended token and the queries come from the kernel before\n",
            "    if (!early) pdl_wait(); // the tables, the appended token and the queries come from the kernel before\n"
            "    if (!early && threadIdx.x == 0) tl_s[1] = tl_time();\n")
    replace("        pdl_wait(); // the queries, the appended token's count and its descriptor\n",
            "        pdl_wait(); // the queries, the appended token's count and its descriptor\n"
            "        if (threadIdx.x == 0) tl_s[1] = tl_time();\n")
    replace("    if (ws.kvh < 0) return; // past the layer's work: nothing to read or write\n",
            "    if (ws.kvh < 0) return; // past the layer's work: nothing to read or write\n"
            "    if (threadIdx.x == 0) { tl_s[9] = ((unsigned long long)ws.t << 40) | ((unsigned long long)ws.kvh << 20) | (unsigned)ws.split;"
            " tl_s[10] = ((unsigned long long)ws.live << 32) | (unsigned)min(ws.chunk, ws.blocks - ws.split * ws.chunk); }\n")
    replace("    const int nbs = staged_blocks;\n", "    const int nbs = staged_blocks;\n    if (threadIdx.x == 0) { tl_s[2] = tl_time(); tl_s[11] = nbs; }\n")
    replace("            if (pair ? ks + vs != 0 : ks != 0) mbar_wait(bar0 + 8 * kb, kph);\n",
            "            if (pair ? ks + vs != 0 : ks != 0) mbar_wait(bar0 + 8 * kb, kph);\n"
            "            if (j == 0 && lane == 0) tl_fw[warp] = tl_time();\n")
    replace("    pdl_trigger(); // the output product's blocks may start loading weights during the merges\n",
            "    if (lane == 0) tl_le[warp] = tl_time();\n"
            "    pdl_trigger(); // the output product's blocks may start loading weights during the merges\n")
    replace("    // Chunk weights go to the rings (the slices were read",
            "    if (threadIdx.x == 0) tl_s[4] = tl_time();\n    // Chunk weights go to the rings (the slices were read")
    replace("const void* pfb, long pfn_b, int merge_grid, int tables_early) \\\n    { \\\n        prefetch_l2(pfa, pfn_a, pfb, pfn_b); \\\n        paged_attention_pipe",
            "const void* pfb, long pfn_b, int merge_grid, int tables_early) \\\n    { \\\n        if (threadIdx.x == 0) { tl_s[0] = tl_time(); for (int z = 1; z < 12; z++) tl_s[z] = 0; for (int z = 0; z < 4; z++) tl_fw[z] = tl_le[z] = 0; tl_s[9] = ~0ull; } \\\n"
            "        prefetch_l2(pfa, pfn_a, pfb, pfn_b); \\\n        paged_attention_pipe")
    replace("            max_blocks, tokens, rows, chunk_blocks, splits, scale, batch, (unsigned)ring, PIPE_STEAL_BUILD ? 0 : merge_grid, tables_early); \\\n    }\n",
            "            max_blocks, tokens, rows, chunk_blocks, splits, scale, batch, (unsigned)ring, PIPE_STEAL_BUILD ? 0 : merge_grid, tables_early); \\\n"
            "        if (threadIdx.x == 0) \\\n        { \\\n"
            "            const unsigned long long tend = tl_time(); unsigned smid; asm volatile(\"mov.u32 %0, %smid;\" : \"=r\"(smid)); \\\n"
            "            const unsigned launch = atomicAdd(&tl_launch, 0u), total = gridDim.x * gridDim.y * gridDim.z; \\\n"
            "            const unsigned id = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); \\\n"
            f"            if (launch >= {first}u && launch < {first + count}u && id < TL_UNITS) \\\n"
            "            { \\\n"
            "                unsigned long long* r = tl_rec + ((unsigned long long)(launch - TL_FIRST) * TL_UNITS + id) * 22; \\\n"
            "                const unsigned long long v[22] = { launch, id, smid, tl_s[9], tl_s[10], tl_s[11], tl_s[8], tl_s[0], tl_s[1], tl_s[2], tl_fw[0], tl_fw[1], tl_fw[2], tl_fw[3], \\\n"
            "                    tl_le[0], tl_le[1], tl_le[2], tl_le[3], tl_s[4], tl_s[5], tend, total }; \\\n"
            "                for (int z = 0; z < 22; z++) r[z] = v[z]; \\\n"
            "            } \\\n"
            f"            if (launch == {first + count}u && id == 0) \\\n"
            "                for (unsigned z = 0; z < TL_COUNT * TL_UNITS; z++) \\\n"
            "                { \\\n"
            "                    const unsigned long long* r = tl_rec + (unsigned long long)z * 22; \\\n"
            "                    if (r[21] != 0) printf(\"TL %llu %llu %llu %llx %llx %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu\\n\", r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], \\\n"
            "                        r[11], r[12], r[13], r[14], r[15], r[16], r[17], r[18], r[19], r[20], r[21]); \\\n"
            "                } \\\n"
            "            __threadfence(); \\\n"
            "            if (atomicAdd(&tl_done, 1u) == total - 1) { tl_done = 0; atomicAdd(&tl_launch, 1u); } \\\n"
            "        } \\\n    }\n")
    # tl_s[5]: after the merge (every unit that reached it); tl_s[8]: whether the unit merged (merge_splits_early's result).
    replace("    merge_splits_early<G, HD, G == 8 ? 8 : 12, false>(",
            "    const bool tl_merged = merge_splits_early<G, HD, G == 8 ? 8 : 12, false>(")
    replace("        kv_heads, merge_row, mkvh, live_splits, PIPE_STEAL_BUILD != 0);\n",
            "        kv_heads, merge_row, mkvh, live_splits, PIPE_STEAL_BUILD != 0);\n"
            "    if (threadIdx.x == 0) { tl_s[8] = tl_merged; tl_s[5] = tl_time(); }\n")
    open(f"{out_dir}/paged_attention_tc.cu", "w").write(s)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))] if xs else float("nan")


def summarize(paths):
    launches = {}
    for path in paths:
        for line in open(path, errors="replace"):
            if not line.startswith("TL "):
                continue
            f = line.split()
            rec = {"launch": int(f[1]), "unit": int(f[2]), "sm": int(f[3]), "info": int(f[4], 16), "size": int(f[5], 16),
                   "staged": int(f[6]), "merged": int(f[7])}
            t = [int(x) for x in f[8:22]]
            (rec["entry"], rec["wait"], rec["staged_at"], *rest) = t
            rec["first"], rec["loop_end"], rec["stored"], rec["merge_end"], rec["end"] = rest[0:4], rest[4:8], rest[8], rest[9], rest[10]
            rec["total"] = int(f[22])
            launches.setdefault((path, rec["launch"]), []).append(rec)
    for (path, launch), recs in sorted(launches.items()):
        live = [r for r in recs if r["info"] != (1 << 64) - 1]
        w0 = min(r["wait"] for r in recs if r["wait"])
        us = lambda x: (x - w0) / 1000.0
        print(f"== {path} launch {launch}: {len(recs)} of {recs[0]['total']} units printed, {len(live)} with work; "
              f"times in us from the first griddepcontrol.wait return (p10 / p50 / p90 / max over units)")
        def row(name, xs):
            if xs:
                print(f"  {name:44s} {pct(xs, 0.1):7.2f} {pct(xs, 0.5):7.2f} {pct(xs, 0.9):7.2f} {max(xs):7.2f}")
        row("entry (resident, before the wait)", [us(r["entry"]) for r in recs])
        row("wait returned", [us(r["wait"]) for r in recs])
        row("descriptors staged", [us(r["staged_at"]) for r in live])
        row("first block arrived (warp 0)", [us(r["first"][0]) for r in live if r["first"][0]])
        row("first block arrived, last warp", [us(max(r["first"])) for r in live if min(r["first"])])
        row("block loop end, first warp", [us(min(x for x in r["loop_end"] if x)) for r in live if any(r["loop_end"])])
        row("block loop end, last warp", [us(max(r["loop_end"])) for r in live if any(r["loop_end"])])
        row("partial output stored", [us(r["stored"]) for r in live if r["stored"]])
        row("merge end (units that merged)", [us(r["merge_end"]) for r in live if r["merged"]])
        row("end (units that merged)", [us(r["end"]) for r in live if r["merged"]])
        row("end (every unit)", [us(r["end"]) for r in recs])
        d = lambda a, b: [(b(r) - a(r)) / 1000.0 for r in live if a(r) and b(r)]
        print("  durations (us, p10 / p50 / p90 / max):")
        row("wait -> descriptors staged", d(lambda r: r["wait"], lambda r: r["staged_at"]))
        row("descriptors -> first block (warp 0)", d(lambda r: r["staged_at"], lambda r: r["first"][0]))
        row("first block -> last warp's loop end", d(lambda r: r["first"][0], lambda r: max(r["loop_end"])))
        row("last loop end -> partial stored", d(lambda r: max(r["loop_end"]), lambda r: r["stored"]))
        row("stored -> merged (merging units)", [(r["merge_end"] - r["stored"]) / 1000.0 for r in live if r["merged"]])
        row("stored -> end (others)", [(r["end"] - r["stored"]) / 1000.0 for r in live if not r["merged"] and r["stored"]])
        blocks = [r["size"] & 0xffffffff for r in live]
        lives = [r["size"] >> 32 for r in live]
        print(f"  blocks a unit {min(blocks)}-{max(blocks)} (mean {statistics.mean(blocks):.1f}), live splits a head {min(lives)}-{max(lives)}")
        sms = {}
        for r in recs:
            sms.setdefault(r["sm"], []).append(r)
        ends = [us(max(r["end"] for r in v)) for v in sms.values()]
        print(f"  SMs {len(sms)}, units an SM {min(len(v) for v in sms.values())}-{max(len(v) for v in sms.values())}; "
              f"SM end p10 {pct(ends, 0.1):.2f} p50 {pct(ends, 0.5):.2f} p90 {pct(ends, 0.9):.2f} max {max(ends):.2f}")
        # Which unit of an SM arrives first (its warps the schedulers' oldest): rank by entry time within the SM, against
        # the rank the grid-block index predicts (id // (total / units an SM)) and against id order within the SM.
        per_sm = max(len(v) for v in sms.values())
        by_index = by_order = n = 0
        rank_ends = {}
        for v in sms.values():
            ordered = sorted(v, key=lambda r: r["entry"])
            ids = sorted(r["unit"] for r in v)
            for k, r in enumerate(ordered):
                n += 1
                by_index += k == r["unit"] * per_sm // r["total"]
                by_order += r["unit"] == ids[k]
                if r["info"] != (1 << 64) - 1 and any(r["loop_end"]):
                    rank_ends.setdefault(k, []).append(us(max(r["loop_end"])))
        print(f"  arrival rank within the SM = id * {per_sm} // units for {by_index} of {n} units, = id order within the SM for {by_order}")
        print("  last warp's loop end by arrival rank (mean): " + ", ".join(
            f"{k}: {statistics.mean(x):.2f} ({len(x)})" for k, x in sorted(rank_ends.items())))
        last = max(live, key=lambda r: r["end"])
        print(f"  last unit: sm {last['sm']}, blocks {last['size'] & 0xffffffff}, merged {last['merged']}, "
              f"wait {us(last['wait']):.2f} staged {us(last['staged_at']):.2f} first {us(last['first'][0]):.2f} "
              f"loop end {us(max(last['loop_end'])):.2f} stored {us(last['stored']):.2f} end {us(last['end']):.2f}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 600, int(sys.argv[5]) if len(sys.argv) > 5 else 2)
    elif len(sys.argv) >= 3 and sys.argv[1] == "summarize":
        summarize(sys.argv[2:])
    else:
        sys.exit(__doc__ or "usage: paged-timeline.py build KERNELS OUT_DIR [FIRST COUNT] | summarize LOG...")
