#!/usr/bin/env bash
# GPU checks and benchmark for a machine with an NVIDIA GPU but no .NET.
#
#   scripts/gpu-tests.sh publish   (here, with the .NET SDK) publishes tests/KvSharp.GpuTests self-contained
#                                  for linux-x64 into .gpu/ (git-ignored) with the stories260K test model; the
#                                  program also runs the kvsharp command line (`.gpu/app/KvSharp.GpuTests kvsharp ARGS`).
#   scripts/gpu-tests.sh run [bench args]   (on the GPU machine, from the repository root) runs the checks,
#                                  then the decode benchmark if any bench arguments are given
#                                  (e.g. --contexts 4096,32768 --steps 64).
#   scripts/gpu-tests.sh paged [args]   (on the GPU machine) the compressed-cache decode benchmark (bench-paged).
#   scripts/gpu-tests.sh issue7 [DIR]   (on the GPU machine) issue 7's whole benchmark in one run, logs into DIR
#                                  (default $OUT, else .gpu/results): dense decode at batch 1 and 8 and prefill, the
#                                  compressed caches at batch 1 and 8, the device sampler, then transformers on the
#                                  same shapes; scripts/issue7-scorecard.py's verdicts last (DIR/scorecard.txt).
#   scripts/gpu-tests.sh kvzip-cli [DIR]   (on the GPU machine) kvsharp ask --press kvzip:keep=0.3 on the CPU and with
#                                  --device cuda over a needle haystack, answers compared (needle model, f32 dummy weights).
#   scripts/gpu-tests.sh press-cli [DIR]   the same for each press of $PRESSES (space-separated; default snapkv, h2o,
#                                  snapkv+pyramid, adakv(h2o), kvzip, KVzip+, KIVI-4, MiKV over H2O, SnapKV then KIVI-4
#                                  and VidKV).
#   scripts/gpu-tests.sh cli [MODEL] [DIR]   (on the GPU machine) kvsharp generate on the CPU and with --device cuda
#                                  (float16 cache, then --kv-cache formats), a cache saved on the CPU continued on the
#                                  GPU (plain and H2O-pressed) and a cache saved on the GPU continued on the CPU; greedy
#                                  text compared; exits 1 when a dense, F16 or F32 pair differs (the quantized ones are
#                                  reported). MODEL: a model folder or file, or a config.json for float32 dummy weights
#                                  with the needle tokenizer ($TOKENIZER); default bench/configs/needle-gqa4.json (the
#                                  needle model's shape with 4 query heads per KV head: the device paged cache reads
#                                  groups of 1/2/4/8, the needle model itself has 3).
# On the GPU machine every command first compiles the kernel files into the cubin cache, one process per file in parallel
# (a program compiles them one after another on first use; on an H100 machine the 8 files compiled in parallel took
# 137 s, their compile times adding up to 335 s: paged_attention.cu 131 s, paged_attention_tc.cu 110 s, gemv.cu 43 s).
# Between the two, copy .gpu/, scripts/ and bench/configs/ to the GPU machine (.gpu/ is git-ignored: with the
# device tool, put them in an ignored folder of the checkout it sends and name that folder in carry).
set -euo pipefail
cd "$(dirname "$0")/.."
# Every embedded kernel file compiled into $KVSHARP_CUDA_CACHE by its own process (NVRTC is single-threaded); a file that
# fails here fails again, with its log, where a check or benchmark loads it.
precompile() {
  export KVSHARP_CUDA_CACHE="${KVSHARP_CUDA_CACHE:-/tmp/kvsharp-cuda}"
  local f
  for f in src/KvSharp/Compute/Cuda/Kernels/*.cu; do .gpu/app/KvSharp.GpuTests compile "$(basename "$f")" > /dev/null 2>&1 & done
  # The format-specialized pipelined builds the benchmark's compressed rows launch (Llama-3.1-8B: 4 query heads per KV
  # head, value groups of 32), compiled on first use otherwise, one after another (CudaPagedKernels.Pipelined), and the
  # INT4 build with block claims, which batch-8 KIVI-4 steps launch (CudaPagedKernels.BlockClaims).
  for f in F16 Fp8E4M3 Int4 Int2 Int4,steal; do .gpu/app/KvSharp.GpuTests compile "pipelined:4,32,$f" > /dev/null 2>&1 & done
  wait || true
}
case "${1:-}" in
  publish)
    rm -rf .gpu/app
    dotnet publish tests/KvSharp.GpuTests -c Release -r linux-x64 --self-contained \
      -p:PublishTrimmed=true -p:SuppressTrimAnalysisWarnings=true -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true \
      -p:DebugType=none -o .gpu/app
    rm -rf .gpu/app/models .gpu/app/*.so .gpu/app/*.xml .gpu/app/KvSharp.Cli.runtimeconfig.json # the CLI's embedded model is tracked in models/; plotting libraries are unused here
    mkdir -p .gpu/models/stories260k
    cp ../shared/models/stories260k/stories260K.gguf .gpu/models/stories260k/
    du -sh .gpu
    ;;
  run)
    shift
    precompile
    export KVSHARP_CUDA_CACHE="${KVSHARP_CUDA_CACHE:-/tmp/kvsharp-cuda}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    status=0
    .gpu/app/KvSharp.GpuTests selftest --stories .gpu/models/stories260k/stories260K.gguf || status=$?
    if [ "$#" -gt 0 ]; then .gpu/app/KvSharp.GpuTests bench "$@" || status=$?; fi
    exit $status
    ;;
  paged)
    # Decode over compressed device caches (KVzip 0.3, KIVI-2, FP8, KVzip 0.3 + INT4, VidKV) vs the float16 cache, e.g.
    # scripts/gpu-tests.sh paged --contexts 4096,32768,131072 --steps 32
    # (--batch 1,8: the same caches at batch 1 and with 8 sequences decoded together, docs/benchmarks.md;
    #  --only "F16 dense|VidKV": only the caches whose names contain one of the parts)
    shift
    precompile
    .gpu/app/KvSharp.GpuTests bench-paged "$@"
    ;;
  issue7)
    precompile
    dir="${2:-${OUT:-.gpu/results}}"
    mkdir -p "$dir"
    export KVSHARP_CUDA_CACHE="${KVSHARP_CUDA_CACHE:-/tmp/kvsharp-cuda}"
    config=bench/configs/llama-3.1-8b.json
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader | tee "$dir/device.txt" || true
    # The board's clocks, power and clock event reasons every 100 ms while the benchmarks run: on an H200 the dense batch-8
    # step reaches the 700 W software power cap (reason 0x4) and its SM clock drops (docs/benchmarks.md, "Stop 36").
    smi=""
    if nvidia-smi --query-gpu=timestamp --format=csv,noheader > /dev/null 2>&1; then
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 100 > "$dir/smi.csv" 2>&1 &
      smi=$!
      trap 'kill "$smi" 2> /dev/null || true' EXIT # stopped when the script ends, however it ends
    fi
    status=0
    .gpu/app/KvSharp.GpuTests bench --config $config --contexts 512,4096,32768,131072 --batch 8 --batch-contexts 4096,32768 \
      --steps 32 --prefill 4096,32768 > "$dir/dense.txt" 2>&1 || status=$?
    # The compressed caches at the issue's three contexts; each row the median of 5 timed runs after a heat-up (the dense
    # reference spread up to 7% on an H200 when timed in the power cap's transient after idle, docs/benchmarks.md "Stop 36").
    .gpu/app/KvSharp.GpuTests bench-paged --config $config --contexts 4096,32768,131072 --steps 16 --repeats 5 > "$dir/paged1.txt" 2>&1 || status=$?
    .gpu/app/KvSharp.GpuTests bench-paged --config $config --batch 8 --contexts 4096,32768,131072 --steps 16 --repeats 5 > "$dir/paged8.txt" 2>&1 || status=$?
    .gpu/app/KvSharp.GpuTests bench-sampling --config bench/configs/needle.json > "$dir/sampling.txt" 2>&1 || status=$?
    python3 scripts/hf-decode-bench.py $config 4096,32768,131072 1,8 8 > "$dir/hf.txt" 2>&1 || status=$?
    grep -h -E "^\|" "$dir/dense.txt" "$dir/paged1.txt" "$dir/paged8.txt" "$dir/sampling.txt" "$dir/hf.txt" || true
    # Point 5's targets row by row (roofline, transformers, byte factors against both references) from these logs.
    python3 scripts/issue7-scorecard.py "$dir" | tee "$dir/scorecard.txt" || status=$?
    exit $status
    ;;
  cli)
    precompile
    model="${2:-bench/configs/needle-gqa4.json}"
    dir="${3:-${OUT:-.gpu/results}}"
    mkdir -p "$dir"
    export KVSHARP_CUDA_CACHE="${KVSHARP_CUDA_CACHE:-/tmp/kvsharp-cuda}"
    kvsharp() { .gpu/app/KvSharp.GpuTests kvsharp "$@"; }
    if [[ "$model" == *.json ]]; then
      # Dummy float32 weights of this shape (kept float32 on the GPU: the two engines differ only by rounding), with
      # the needle model's tokenizer ($TOKENIZER) beside the config.
      mkdir -p "$dir/model"
      cp "$model" "$dir/model/config.json"
      cp "${TOKENIZER:-models/kvsharp-needle-16m/tokenizer.json}" "$dir/model/"
      source=(--dummy "$dir/model/config.json" --dummy-type f32)
    else
      source=(-m "$model")
    fi
    prompt="The most important thing about a startup is that it grows fast. Everything else follows from growth: the hiring, the fundraising, the product. Founders who understand this early make better choices about what to build."
    more=" What matters next is"
    common=(generate "${source[@]}" --temperature 0 --ignore-eos -n 64)
    status=0
    # run NAME ARGS...: one generate, its text in $dir/NAME.txt, its stderr in $dir/NAME.err; a failed run fails the script.
    run() {
      local name="$1"; shift
      if ! kvsharp "${common[@]}" "$@" > "$dir/$name.txt" 2> "$dir/$name.err"; then
        echo "FAIL $name: exit code, $(tail -n 1 "$dir/$name.err")"; status=1
      fi
    }
    # compare A B STRICT: the same greedy text, else where it first differs (a mismatch fails the script when STRICT is 1).
    compare() {
      local a b n
      a="$(cat "$dir/$1.txt")"; b="$(cat "$dir/$2.txt")"
      if [ "$a" == "$b" ]; then echo "| $1 | $2 | same text (${#a} chars) |"; return; fi
      n=0; while [ "$n" -lt "${#a}" ] && [ "${a:$n:1}" == "${b:$n:1}" ]; do n=$((n + 1)); done
      echo "| $1 | $2 | differ from char $n of ${#a}: '${a:0:$n}' then '${a:$n:24}' vs '${b:$n:24}' |"
      if [ "$3" == 1 ]; then status=1; fi
    }
    run cpu-dense -p "$prompt"
    run gpu-dense -p "$prompt" --device cuda
    for f in f32 f16 fp8 int8 int4 int4:int2 int2; do
      run "cpu-${f/:/-}" -p "$prompt" --kv-cache "$f"
      run "gpu-${f/:/-}" -p "$prompt" --kv-cache "$f" --device cuda
    done
    # Saved caches: the CPU's (plain f16 and H2O-pressed while decoding) continued on the GPU; the GPU's continued on the CPU.
    run cpu-save-f16 -p "$prompt" --kv-cache f16 --save-cache "$dir/cpu-f16.kvc"
    run cpu-save-h2o -p "$prompt" --kv-cache f16 --decode-press h2o:tokens=32 --save-cache "$dir/cpu-h2o.kvc"
    run gpu-save-f16 -p "$prompt" --kv-cache f16 --save-cache "$dir/gpu-f16.kvc" --device cuda
    for c in cpu-f16 cpu-h2o gpu-f16; do
      run "cpu-after-$c" -p "$more" --load-cache "$dir/$c.kvc"
      run "gpu-after-$c" -p "$more" --load-cache "$dir/$c.kvc" --device cuda
    done
    echo "| A | B | greedy text |"
    echo "|---|---|---|"
    compare cpu-dense gpu-dense 1
    for f in f32 f16; do compare "cpu-$f" "gpu-$f" 1; done
    for f in fp8 int8 int4 int4-int2 int2; do compare "cpu-$f" "gpu-$f" 0; done
    compare cpu-save-f16 gpu-save-f16 1
    compare cpu-after-cpu-f16 gpu-after-cpu-f16 1
    compare cpu-after-cpu-h2o gpu-after-cpu-h2o 0
    compare cpu-after-gpu-f16 gpu-after-gpu-f16 1
    compare cpu-after-cpu-f16 cpu-after-gpu-f16 0
    grep -h "^cuda:\|^loaded\|^saved" "$dir"/gpu-dense.err "$dir"/gpu-int4.err "$dir"/gpu-after-cpu-h2o.err "$dir"/gpu-save-f16.err || true
    exit $status
    ;;
  kvzip-cli|press-cli)
    # kvsharp ask with a press on the CPU and with --device cuda (prefill, press and answers on the GPU) over a needle
    # haystack of ~1800 tokens hiding two numbers, two questions (the second after the first is rolled back): the answer
    # rows compared (the decode tok/s column dropped), the compression times printed. On the needle model (its bfloat16
    # weights: the GPU's prefill products round activations to bfloat16, so near-tie tokens may differ; reported) and on
    # float32 dummy weights of its shape (bench/configs/needle.json; the engines differ only by rounding: strict).
    # kvzip-cli: kvzip:keep=0.3,chunk=512; press-cli: the presses in $PRESSES (space-separated; default SnapKV, H2O,
    # SnapKV under a pyramid budget, H2O under AdaKV, KVzip, KVzip+, device re-quantization: KIVI-4, MiKV ranked by H2O,
    # a sequence SnapKV then KIVI-4, and VidKV encoded on the device). The CPU runs go while the kernels compile.
    mode="$1"
    dir="${2:-${OUT:-.gpu/results}}"
    mkdir -p "$dir/dummy"
    export KVSHARP_CUDA_CACHE="${KVSHARP_CUDA_CACHE:-/tmp/kvsharp-cuda}"
    precompile & compiling=$!
    if [ "$mode" == kvzip-cli ]; then presses=("kvzip:keep=0.3,chunk=512")
    else read -r -a presses <<< "${PRESSES:-snapkv:keep=0.3 h2o:keep=0.3 snapkv+pyramid:keep=0.3 adakv(h2o):keep=0.3 kvzip:keep=0.3,chunk=512 kvzipplus:keep=0.3,chunk=512 kivi:bits=4,residual=64 mikv(h2o):top=0.3,high=int8,low=int4 snapkv:keep=0.5+kivi:bits=4,residual=64 vidkv:outliers=0.5,salient=2,residual=64}"; fi
    kvsharp() { .gpu/app/KvSharp.GpuTests kvsharp "$@"; }
    python3 - "$dir/context.txt" <<'PY'
import random, sys
r = random.Random(7)
filler = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."]
at = {r.randrange(60, 140): ("apple", 4817263), r.randrange(180, 300): ("violin", 7302591)}
s = []
for i in range(320):
    if i in at: s.append("One of the special magic numbers for %s is: %d." % at[i])
    s.append(filler[i % 5])
open(sys.argv[1], "w").write("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about the number afterwards.\n" + " ".join(s) + "\n")
PY
    cp bench/configs/needle.json "$dir/dummy/config.json"
    cp models/kvsharp-needle-16m/tokenizer.json "$dir/dummy/"
    q() { echo "What is the special magic number for $1 mentioned in the provided text? The special magic number for $1 mentioned in the provided text is"; }
    status=0
    ask() { # model press device
      local m="$1" p="$2" d="$3" name="$1-$(echo "$2" | tr -c 'a-zA-Z0-9=.\n' '_')-$3" source
      if [ "$m" == needle ]; then source=(-m models/kvsharp-needle-16m); else source=(--dummy "$dir/dummy/config.json" --dummy-type f32); fi
      if ! kvsharp ask "${source[@]}" --context "$dir/context.txt" --press "$p" -q "$(q apple)" -q "$(q violin)" -n 8 \
        --device "$d" > "$dir/ask-$name.txt" 2> "$dir/ask-$name.err"; then
        echo "FAIL ask $m $p $d: $(tail -n 1 "$dir/ask-$name.err")"; status=1
      fi
      # The answer table's rows without their last cell (decode tok/s).
      awk '/measure/{exit} /│/' "$dir/ask-$name.txt" | sed -E 's/│[^│]*│$/│/' > "$dir/answers-$name.txt"
    }
    for m in needle dummy; do for p in "${presses[@]}"; do ask "$m" "$p" cpu; done; done
    wait "$compiling" || true
    for m in needle dummy; do for p in "${presses[@]}"; do ask "$m" "$p" cuda; done; done
    echo "| model | press | answers = CPU | CPU compression | GPU compression | GPU prefill |"
    echo "|---|---|---|---|---|---|"
    for m in needle dummy; do
      for p in "${presses[@]}"; do
        base="$m-$(echo "$p" | tr -c 'a-zA-Z0-9=.\n' '_')"
        same=no
        if cmp -s "$dir/answers-$base-cpu.txt" "$dir/answers-$base-cuda.txt" && [ -s "$dir/answers-$base-cuda.txt" ]; then same=yes; elif [ "$m" == dummy ]; then status=1; fi
        ms() { grep -o "$2 *│ *[0-9,]* ms" "$1" | grep -o '[0-9,]* ms' | head -n 1; }
        echo "| $m | $p | $same | $(ms "$dir/ask-$base-cpu.txt" 'compression time') | $(ms "$dir/ask-$base-cuda.txt" 'compression time') | $(grep -o 'prefill [0-9]* ms' "$dir/ask-$base-cuda.txt" | head -n 1) |"
        [ "$same" == yes ] || { echo "CPU:"; cat "$dir/answers-$base-cpu.txt"; echo "GPU:"; cat "$dir/answers-$base-cuda.txt"; }
      done
    done
    exit $status
    ;;
  *)
    echo "usage: scripts/gpu-tests.sh publish | run [bench options] | paged [bench-paged options] | issue7 [DIR] | cli [MODEL] [DIR] | kvzip-cli [DIR] | press-cli [DIR]" >&2
    exit 64
    ;;
esac
