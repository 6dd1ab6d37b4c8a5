#!/bin/bash
# gpu_device.sh -- the GPU checks and benches on a machine with a GPU but without this
# project's build dependencies (a lent device machine): runs prebuilt binaries.
#   bench/gpu_device.sh BUILD_DIR [LIB_DIR] [WORK_DIR]
# BUILD_DIR holds tests/test_gpu, bench/gpu and thaw (make CUDA=1 [CUDA_ARCHS=90] BUILD=...);
# LIB_DIR the shared libraries they need that the machine lacks (liblz4, libxxhash, libcjson,
# libmicrohttpd); WORK_DIR (default /tmp/thaw-gpu) receives the synthetic snapshots. Steps,
# each logged:
#   1. test_gpu (what `make test-gpu` runs)
#   1b. server: tests/test_server.py with every `thaw serve` on the GPU (THAW_TEST_DEVICE=cuda;
#      the openai package on PYTHONPATH, else its SDK cases skip), on the default model packed
#      from models/'s GGUF as `make model` packs it
#   2. bench/gpu on synthetic Llama-3-8B (the issue's target shape) and Qwen2.5-0.5B, int4
#   3. the 8B bench at concurrency 1 again with THAW_GPU_AB set in its environment (default
#      THAW_CUDA_GRAPHS=0: decode without graphs; THAW_LOAD_IO=pread: the load read with
#      pread instead of through a mapping), for comparison
#   4. ncu (opt-in): per-kernel durations of a few decode layers
#   5. test_gpu under compute-sanitizer memcheck with THAW_GPU_QUICK=1 (as `make test-gpu`)
# THAW_GPU_STEPS picks steps (default "test server bench ab memcheck"; "ncu" is opt-in: its one run,
# 2026-11-22, profiled nothing in 300 s). SmolLM2's GGUF, when at models/, is used by steps 1
# and 5 as on any machine.
set -u
B=${1:?usage: gpu_device.sh BUILD_DIR [LIB_DIR] [WORK_DIR]}
L=${2:-}
W=${3:-/tmp/thaw-gpu}
mkdir -p "$W"
libs=$L
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && libs=$libs:$d
done
# the CUDA runtime and cuBLAS from Python wheels, where the toolkit's are missing
for d in $(python3 -c 'import nvidia, os; p = nvidia.__path__[0]; print(" ".join(os.path.join(p, s, "lib") for s in os.listdir(p)))' 2>/dev/null); do
    [ -d "$d" ] && libs=$libs:$d
done
export PATH=$PATH:/usr/local/cuda/bin
export LD_LIBRARY_PATH=${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
step() { echo "== $* ($(date +%T))"; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
echo "cpus $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
ldd "$B/tests/test_gpu" | grep "not found" && { echo "missing libraries"; exit 1; }

rc=0
steps=" ${THAW_GPU_STEPS:-test server bench ab memcheck} "
has() { case $steps in *" $1 "*) return 0 ;; esac; return 1; }
if has test; then
    step test_gpu
    timeout 300 "$B/tests/test_gpu" || rc=1
fi

if has server; then
    step "server tests on the GPU"
    # thaw through a wrapper that sets the library path for it alone (python keeps its own)
    run="$W/thaw-run"
    sq() { printf "'%s'" "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; } # single-quoted for sh
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$(sq "$LD_LIBRARY_PATH")" "$(sq "$(realpath "$B/thaw")")" > "$run"
    chmod +x "$run"
    ldd "$B/thaw" | grep "not found" && { echo "missing libraries for thaw"; exit 1; }
    gguf=models/SmolLM2-135M-Instruct.Q4_1.gguf # (run from the repository's root)
    if [ -f "$gguf" ]; then
        # as `make model` packs it
        [ -f models/smollm2-135m-instruct.thaw ] ||
            "$run" pack "$gguf" -o models/smollm2-135m-instruct.thaw $(sed -n 's/^MODEL_PACK_FLAGS *:= *//p' Makefile) ||
            rc=1
        env -u LD_LIBRARY_PATH THAW_TEST_DEVICE=cuda THAW_BIN="$run" timeout 300 python3 tests/test_server.py || rc=1
    else
        echo "no $gguf: server tests skipped"
    fi
fi

has bench || THAW_BENCH_MODELS=
for m in ${THAW_BENCH_MODELS-llama-3-8b qwen2.5-0.5b}; do
    step "pack $m"
    [ -f "$W/$m.thaw" ] || timeout 600 "$B/bench/gpu" --synthetic "$m" "$W/$m.thaw" || { rc=1; continue; }
    step "bench $m"
    timeout 600 "$B/bench/gpu" "$W/$m.thaw" "${THAW_BENCH_MAX_C:-256}" || rc=1
done
if has ab && [ -f "$W/llama-3-8b.thaw" ]; then
    ab=${THAW_GPU_AB:-THAW_CUDA_GRAPHS=0}
    step "bench llama-3-8b with $ab"
    env "$ab" timeout 200 "$B/bench/gpu" "$W/llama-3-8b.thaw" 1 || rc=1
fi
if has ncu && [ -f "$W/llama-3-8b.thaw" ] && command -v ncu >/dev/null 2>&1; then
    # real per-kernel durations of decode kernels (no graphs, so kernels are launched one by
    # one; caches flushed before each replay, clocks as found): a few layers of a decode step
    step "ncu: decode kernels of llama-3-8b"
    THAW_CUDA_GRAPHS=0 timeout 120 ncu --clock-control none --launch-skip 300 --launch-count 24 \
        -k 'regex:gemv2|attention_kernel|rope_store|rmsnorm|embed' --csv \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed \
        "$B/bench/gpu" "$W/llama-3-8b.thaw" 1 > "$W/ncu.csv" 2>&1 || rc=1
    grep -E '^"[0-9]' "$W/ncu.csv" | awk -F'","' '{n=split($5,k,"("); print k[1], $(NF-2), $NF}' | tr -d '"' | head -120
fi
if ! has memcheck; then
    :
elif command -v compute-sanitizer >/dev/null 2>&1; then
    step compute-sanitizer memcheck
    THAW_GPU_QUICK=1 timeout 600 compute-sanitizer --tool memcheck --error-exitcode 1 --leak-check full \
        "$B/tests/test_gpu" || rc=1
else
    echo "compute-sanitizer not installed: memcheck skipped"
fi
step "done rc=$rc"
exit $rc
