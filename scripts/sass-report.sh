#!/usr/bin/env bash
# Hopper machine code of one embedded kernel file without a GPU: compiles it as KernelCompiler does (every .cuh as a named
# header, --std=c++17 -default-device) to a cubin for sm_90 with NVRTC 12.4, whose ptxas knows Hopper's bulk copies and
# mbarriers (scripts/nvrtc-check.sh's CUDA 11.8 stops at PTX), prints ptxas's registers / spills per kernel and, with
# --loops, the opcode counts of each kernel's loops (the larger backward branches of the disassembly); with --by-source
# (compiled with -lineinfo, which leaves the code as it is), each kernel's main loop (the largest one with no global store,
# atomic or exit in it: the pipelined kernel's block loop, not the mbarrier spins placed after it) charged to the source
# functions its instructions come from (the innermost inlined one), opcodes per function. The device's NVRTC (CUDA 13)
# allocates registers a little differently: compare builds with each other here, not with the device.
#   scripts/sass-report.sh FILE.cu[:DEFINE,DEFINE...] [--sass OUT.sass] [--loops] [--by-source]
# e.g. one format-specialized pipelined kernel (INT2 and INT4 blocks, group 4, value group 32; see CudaPagedKernels.Pipelined):
#   scripts/sass-report.sh paged_attention_tc.cu:PIPE_ONLY,PIPE_G=4,PIPE_VG=32,PIPE_FORMATS=97,PIPE_MIN_BLOCKS=4 --loops
# NVRTC and cuobjdump come from Debian trixie's non-free libnvrtc12, libnvrtc-builtins12.4 and nvidia-cuda-toolkit,
# downloaded once into $SASS_DIR (default /tmp/cuda124) without installing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${SASS_DIR:-/tmp/cuda124}"
lib="$dir/root/usr/lib/x86_64-linux-gnu"
if [ ! -e "$lib/libnvrtc.so.12" ] || [ ! -x "$dir/root/usr/bin/cuobjdump" ]; then
  mkdir -p "$dir/lists"
  echo "deb http://deb.debian.org/debian trixie main contrib non-free" > "$dir/sources.list"
  o=(-oDir::State::Lists="$dir/lists" -oDir::Etc::SourceList="$dir/sources.list" -oDir::Etc::SourceParts=/dev/null)
  apt-get "${o[@]}" update > /dev/null
  (cd "$dir" && apt-get "${o[@]}" download libnvrtc12 libnvrtc-builtins12.4 nvidia-cuda-toolkit > /dev/null)
  for f in "$dir"/*.deb; do dpkg -x "$f" "$dir/root"; done
fi
spec="${1:?usage: scripts/sass-report.sh FILE.cu[:DEFINE,...] [--sass OUT.sass] [--loops] [--by-source]}"
shift
sass="" loops=0 bysource=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sass) sass="$2"; shift 2 ;;
    --loops) loops=1; shift ;;
    --by-source) bysource=1; shift ;;
    *) echo "unknown option '$1' (--sass OUT.sass, --loops, --by-source)" >&2; exit 64 ;;
  esac
done
cubin="$(mktemp --suffix .cubin)"
trap 'rm -f "$cubin"' EXIT
LD_LIBRARY_PATH="$lib" python3 - "$lib/libnvrtc.so.12" src/KvSharp/Compute/Cuda/Kernels "$spec" "$cubin" "$bysource" <<'PY'
import ctypes, glob, os, sys
nvrtc = ctypes.CDLL(sys.argv[1])
kernels, spec, out = sys.argv[2], sys.argv[3], sys.argv[4]
name, _, defs = spec.partition(':')
headers = sorted(glob.glob(os.path.join(kernels, '*.cuh')))
texts = (ctypes.c_char_p * len(headers))(*[open(h, 'rb').read() for h in headers])
names = (ctypes.c_char_p * len(headers))(*[os.path.basename(h).encode() for h in headers])
options = [b'--gpu-architecture=sm_90', b'--std=c++17', b'-default-device', b'--ptxas-options=-v']
options += [('-D' + d).encode() for d in defs.split(',') if d] + ([b'-lineinfo'] if sys.argv[5] == '1' else [])
program = ctypes.c_void_p()
nvrtc.nvrtcCreateProgram(ctypes.byref(program), open(os.path.join(kernels, name), 'rb').read(), name.encode(), len(headers), texts, names)
result = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(program, log)
text = log.value.decode(errors='replace')
if result != 0:
    print(f'{spec}: FAILED\n{text}')
    sys.exit(1)
# ptxas -v: "Compiling entry function 'X'", "N bytes stack frame, N bytes spill stores, N bytes spill loads", "Used N registers"
kernel = None
for line in text.splitlines():
    if "Compiling entry function" in line: kernel = line.split("'")[1]
    elif kernel and 'spill stores' in line: spills = line.split('.', 1)[1].strip()
    elif kernel and 'Used' in line and 'registers' in line:
        print(f"{kernel}: {line.split('Used', 1)[1].split(',')[0].strip()}, {spills}")
        kernel = None
nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
cubin = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetCUBIN(program, cubin)
open(out, 'wb').write(cubin.raw)
PY
if [ -n "$sass" ] || [ "$loops" = 1 ]; then
  text="$("$dir/root/usr/bin/cuobjdump" -sass "$cubin")"
  if [ -n "$sass" ]; then printf '%s\n' "$text" > "$sass"; fi
  if [ "$loops" = 1 ]; then
    printf '%s\n' "$text" | python3 -c '
import collections, re, sys
# Per kernel: instructions (address, opcode without modifiers) and its loops, backward branches over > 64 instructions.
kernels, cur = {}, None
for line in sys.stdin:
    m = re.match(r"\s*Function : (\S+)", line)
    if m: cur = kernels.setdefault(m.group(1), []); continue
    m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*?);", line)
    if m and cur is not None: cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
for name, ins in kernels.items():
    print(f"{name}: {len(ins)} instructions")
    for a, op, args in ins:
        b = re.search(r"0x([0-9a-f]+)\s*$", args.strip()) if op.startswith("BRA") else None
        if b and int(b.group(1), 16) < a and (a - int(b.group(1), 16)) // 16 > 64:
            lo = int(b.group(1), 16)
            body = collections.Counter(o.split(".")[0] for x, o, _ in ins if lo <= x <= a)
            top = ", ".join(f"{o} {n}" for o, n in body.most_common(12))
            print(f"  loop {lo:#x}..{a:#x}: {sum(body.values())} instructions ({top})")
'
  fi
fi
if [ "$bysource" = 1 ]; then
  "$dir/root/usr/bin/nvdisasm" -g -c "$cubin" | python3 -c '
import collections, glob, os, re, sys
# Source line -> enclosing function (the last __device__/__global__ definition at or above it), per file.
funcs = {}
for path in glob.glob(os.path.join(sys.argv[1], "*.cu*")):
    cur, table = "?", {}
    for i, line in enumerate(open(path), 1):
        m = re.search(r"__(?:device|global)__\b.*?(\w+)\s*\(", line)
        if m and not line.lstrip().startswith("//"): cur = m.group(1)
        table[i] = cur
    funcs[os.path.basename(path)] = table
# nvdisasm names branch targets by labels (.L_x_N), placed before the instruction they mark.
kernels, cur, where, labels, pending = {}, None, ("?", 0), {}, []
for line in sys.stdin:
    m = re.match(r"\.text\.(\S+):", line)
    if m: cur = kernels.setdefault(m.group(1), []); continue
    m = re.match(r"(\.L_x_\d+):", line)
    if m: pending.append(m.group(1)); continue
    m = re.search(r"//## File \"([^\"]+)\", line (\d+)", line)
    if m: where = (os.path.basename(m.group(1)), int(m.group(2))); continue
    m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*?);", line)
    if m and cur is not None:
        for label in pending: labels[label] = int(m.group(1), 16)
        pending = []
        cur.append((int(m.group(1), 16), m.group(2), m.group(3), where))
for name, ins in kernels.items():
    best = None
    for a, op, args, _ in ins:
        b = re.search(r"\((\.L_x_\d+)\)", args) if op.startswith("BRA") else None
        if not b or labels.get(b.group(1), a) >= a: continue
        lo = labels[b.group(1)]
        if any(o.startswith(("STG", "ATOMG", "RED", "EXIT")) for x, o, _, _ in ins if lo <= x <= a): continue
        if best is None or a - lo > best[1] - best[0]: best = (lo, a)
    if best is None: continue
    body = [(op.split(".")[0], w) for a, op, _, w in ins if best[0] <= a <= best[1]]
    print(f"{name}: main loop {best[0]:#x}..{best[1]:#x}, {len(body)} instructions by source function")
    per = collections.defaultdict(collections.Counter)
    for op, (f, l) in body: per[f"{funcs.get(f, {}).get(l, f)} ({f})" if f not in ("paged_attention_tc.cu",) else funcs[f].get(l, "?")][op] += 1
    for fn, c in sorted(per.items(), key=lambda x: -sum(x[1].values())):
        print(f"  {sum(c.values()):5d} {fn}: " + ", ".join(f"{o} {n}" for o, n in c.most_common(8)))
' src/KvSharp/Compute/Cuda/Kernels
fi
