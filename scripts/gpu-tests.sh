#!/usr/bin/env bash
# GPU checks and benchmark for a machine with an NVIDIA GPU but no .NET.
#
#   scripts/gpu-tests.sh publish   (here, with the .NET SDK) publishes tests/KvSharp.GpuTests self-contained
#                                  for linux-x64 into .gpu/ (git-ignored) with the stories260K test model.
#   scripts/gpu-tests.sh run [bench args]   (on the GPU machine, from the repository root) runs the checks,
#                                  then the decode benchmark if any bench arguments are given
#                                  (e.g. --contexts 4096,32768 --steps 64).
#   scripts/gpu-tests.sh paged [args]   (on the GPU machine) the compressed-cache decode benchmark (bench-paged).
#   scripts/gpu-tests.sh issue7 [DIR]   (on the GPU machine) issue 7's whole benchmark in one run, logs into DIR
#                                  (default $OUT, else .gpu/results): dense decode at batch 1 and 8 and prefill, the
#                                  compressed caches at batch 1 and 8, the device sampler, then transformers on the
#                                  same shapes.
# Between the two, copy .gpu/, scripts/ and bench/configs/ to the GPU machine (.gpu/ is git-ignored: with the
# device tool, put them in an ignored folder of the checkout it sends and name that folder in carry).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  publish)
    rm -rf .gpu/app
    dotnet publish tests/KvSharp.GpuTests -c Release -r linux-x64 --self-contained \
      -p:PublishTrimmed=true -p:SuppressTrimAnalysisWarnings=true -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true \
      -p:DebugType=none -o .gpu/app
    mkdir -p .gpu/models/stories260k
    cp ../shared/models/stories260k/stories260K.gguf .gpu/models/stories260k/
    du -sh .gpu
    ;;
  run)
    shift
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
    export KVSHARP_CUDA_CACHE="${KVSHARP_CUDA_CACHE:-/tmp/kvsharp-cuda}"
    .gpu/app/KvSharp.GpuTests bench-paged "$@"
    ;;
  issue7)
    dir="${2:-${OUT:-.gpu/results}}"
    mkdir -p "$dir"
    export KVSHARP_CUDA_CACHE="${KVSHARP_CUDA_CACHE:-/tmp/kvsharp-cuda}"
    config=bench/configs/llama-3.1-8b.json
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$dir/device.txt" || true
    status=0
    .gpu/app/KvSharp.GpuTests bench --config $config --contexts 512,4096,32768,131072 --batch 8 --batch-contexts 4096,32768 \
      --steps 32 --prefill 4096,32768 > "$dir/dense.txt" 2>&1 || status=$?
    .gpu/app/KvSharp.GpuTests bench-paged --config $config --contexts 32768,131072 --steps 16 > "$dir/paged1.txt" 2>&1 || status=$?
    .gpu/app/KvSharp.GpuTests bench-paged --config $config --batch 8 --contexts 32768,131072 --steps 16 > "$dir/paged8.txt" 2>&1 || status=$?
    .gpu/app/KvSharp.GpuTests bench-sampling > "$dir/sampling.txt" 2>&1 || status=$?
    python3 scripts/hf-decode-bench.py $config 4096,32768,131072 1,8 8 > "$dir/hf.txt" 2>&1 || status=$?
    grep -h -E "^\|" "$dir/dense.txt" "$dir/paged1.txt" "$dir/paged8.txt" "$dir/sampling.txt" "$dir/hf.txt"
    exit $status
    ;;
  *)
    echo "usage: scripts/gpu-tests.sh publish | run [bench options] | paged [bench-paged options] | issue7 [DIR]" >&2
    exit 64
    ;;
esac
