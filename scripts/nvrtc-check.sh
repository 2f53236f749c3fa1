#!/usr/bin/env bash
# Compile-checks the embedded CUDA kernels (src/KvSharp/Compute/Cuda/Kernels/*.cu) with NVRTC on a machine without a GPU,
# the way KernelCompiler compiles them on the device (every .cuh as a named header, --std=c++17 -default-device), to
# PTX for compute_90: C++ errors show here instead of in a device call. Inline PTX is not assembled (ptxas runs on the
# device only), so an invalid instruction still shows there.
#   scripts/nvrtc-check.sh [FILE.cu[:DEFINE,DEFINE...] ...]   (default: every kernel file, and the format-specialized
#                                              builds of paged_attention_tc.cu that CudaPagedKernels.Pipelined compiles)
# NVRTC comes from Debian's non-free libnvrtc11.2 + libnvrtc-builtins11.8 (CUDA 11.8, which knows sm_90), downloaded
# once into $NVRTC_DIR (default /tmp/nvrtc) without installing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${NVRTC_DIR:-/tmp/nvrtc}"
lib="$dir/root/usr/lib/x86_64-linux-gnu"
if [ ! -e "$lib/libnvrtc.so.11.2" ]; then
  mkdir -p "$dir/lists"
  echo "deb http://deb.debian.org/debian bookworm main contrib non-free" > "$dir/sources.list"
  o=(-oDir::State::Lists="$dir/lists" -oDir::Etc::SourceList="$dir/sources.list" -oDir::Etc::SourceParts=/dev/null)
  apt-get "${o[@]}" update > /dev/null
  (cd "$dir" && apt-get "${o[@]}" download libnvrtc11.2 libnvrtc-builtins11.8 > /dev/null)
  for f in "$dir"/*.deb; do dpkg -x "$f" "$dir/root"; done
fi
kernels=src/KvSharp/Compute/Cuda/Kernels
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=($(cd $kernels && ls *.cu))
  # F16 keys and values (bits 0, 1), 16 KB rings; INT2 (bit 6) and INT4 (bit 5), 8 KB rings; BF16 + FP8 + INT8 + binary, group 8
  files+=(paged_attention_tc.cu:PIPE_ONLY,PIPE_G=4,PIPE_VG=32,PIPE_FORMATS=3,PIPE_MIN_BLOCKS=3
          paged_attention_tc.cu:PIPE_ONLY,PIPE_G=1,PIPE_VG=128,PIPE_FORMATS=97,PIPE_MIN_BLOCKS=4
          paged_attention_tc.cu:PIPE_ONLY,PIPE_G=8,PIPE_VG=64,PIPE_FORMATS=285,PIPE_MIN_BLOCKS=3)
fi
LD_LIBRARY_PATH="$lib" python3 - "$lib/libnvrtc.so.11.2" "$kernels" "${files[@]}" <<'PY'
import ctypes, glob, os, sys
nvrtc = ctypes.CDLL(sys.argv[1])
kernels, files = sys.argv[2], sys.argv[3:]
headers = sorted(glob.glob(os.path.join(kernels, '*.cuh')))
texts = (ctypes.c_char_p * len(headers))(*[open(h, 'rb').read() for h in headers])
names = (ctypes.c_char_p * len(headers))(*[os.path.basename(h).encode() for h in headers])
options = [b'--gpu-architecture=compute_90', b'--std=c++17', b'-default-device']
failed = 0
for spec in files:
    f, _, defines = spec.partition(':')
    opts = options + [b'-D' + d.encode() for d in defines.split(',') if d]
    program = ctypes.c_void_p()
    nvrtc.nvrtcCreateProgram(ctypes.byref(program), open(os.path.join(kernels, f), 'rb').read(), f.encode(), len(headers), texts, names)
    result = nvrtc.nvrtcCompileProgram(program, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    print(f'{spec}: ' + ('ok' if result == 0 else 'FAILED'))
    if result != 0:
        print(log.value.decode(errors='replace'))
        failed += 1
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
sys.exit(1 if failed else 0)
PY
