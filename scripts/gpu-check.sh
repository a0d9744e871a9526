#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and its driver: builds the `cuda` feature (release), runs
# the BTLM reference-output tests with the models on the GPU, starts btlm-miner on the GPU,
# and runs the bench there.
#
#   scripts/gpu-check.sh                 GPU 0 (CUDA_VISIBLE_DEVICES to pick another)
#   BENCH_LAYERS=32 scripts/gpu-check.sh bench at the full depth (needs ~12 GB of GPU memory
#                                        for f32 and ~11 GB of disk for the random checkpoint)
#
# Without a GPU it stops at once with one error line (use scripts/check-cuda.sh there).
#
# Steps:
# 1. nvidia-smi must list a GPU; its compute capability becomes CUDA_COMPUTE_CAP (unless set),
#    and its driver's CUDA version picks the toolkit: 13.4 if the driver supports it, else
#    13.0 (scripts/cuda-env.sh; a driver cannot load PTX made by a newer nvcc).
# 2. Build with the toolkit from PyPI (target/cuda/<version>); libcuda is linked against the
#    stub made there but, with the stub off the library path, resolves to the driver's
#    libcuda.so.1 at run time (checked with ldd).
# 3. `cargo test --release -p prompting-btlm-backend --features cuda` with
#    BTLM_TEST_DEVICE=cuda: tests/reference.rs loads its models on the GPU (the quantized
#    formats, CPU-only, stay on the CPU); the other tests run on the CPU.
# 4. btlm-miner --dev --btlm.device cuda on the tiny checkpoint must reach "serving on".
# 5. The bench (examples/bench.rs) with --device cuda for f32, bf16, f16.
# Logs: target/cuda/gpu-check/. Record the bench table in docs/benchmarks.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

fail() {
  echo "gpu-check: $*" >&2
  exit 1
}

command -v nvidia-smi >/dev/null 2>&1 ||
  fail "no NVIDIA GPU here (nvidia-smi not found); on a machine without a GPU run scripts/check-cuda.sh"
gpus=$(nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1) ||
  fail "nvidia-smi found no usable GPU: $(echo "$gpus" | head -1)"
[ -n "$gpus" ] || fail "nvidia-smi lists no GPU"
echo "gpu-check: GPUs:"
echo "$gpus" | sed 's/^/  /'
driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -1)
[ -n "$driver_cuda" ] || fail "cannot read the driver's CUDA version from nvidia-smi"
ver() { echo "$1" | awk -F. '{ printf "%d%03d", $1, $2 }'; }
if [ "$(ver "$driver_cuda")" -ge "$(ver 13.4)" ]; then
  export CUDA_TOOLKIT="${CUDA_TOOLKIT:-13.4}"
elif [ "$(ver "$driver_cuda")" -ge "$(ver 13.0)" ]; then
  export CUDA_TOOLKIT="${CUDA_TOOLKIT:-13.0}"
else
  fail "the driver supports CUDA $driver_cuda; this build needs a driver for CUDA 13.0 or newer (R580+): candle's cudarc links CUDA 13 libraries from PyPI"
fi
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  first=${CUDA_VISIBLE_DEVICES:-0}
  first=${first%%,*}
  cap=$(nvidia-smi -i "$first" --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
  [[ "$cap" =~ ^[0-9]+$ ]] || fail "cannot read the compute capability of GPU $first: $cap"
  export CUDA_COMPUTE_CAP=$cap
fi
[ "$CUDA_COMPUTE_CAP" -ge 75 ] || fail "compute capability $CUDA_COMPUTE_CAP: CUDA 13 targets 7.5 and newer"
# The driver's libcuda.so.1: in the linker cache or on LD_LIBRARY_PATH (containers).
driver_lib() {
  ldconfig -p 2>/dev/null | grep 'libcuda\.so\.1 ' >/dev/null && return 0
  local d
  for d in $(echo "${LD_LIBRARY_PATH:-}" | tr ':' ' '); do
    [ -e "$d/libcuda.so.1" ] && return 0
  done
  return 1
}
driver_lib || fail "the driver's libcuda.so.1 is neither in the linker cache (ldconfig -p) nor on LD_LIBRARY_PATH"

# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh
cuda_env "$repo"
export CARGO_TARGET_DIR="$repo/target/cuda/build"
# The wheels' cuBLAS/cuRAND/NVRTC/cudart; deliberately not lib/stubs: the driver is real here.
export LD_LIBRARY_PATH="$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
logs="$repo/target/cuda/gpu-check"
mkdir -p "$logs"
echo "gpu-check: driver CUDA $driver_cuda, toolkit $CUDA_TOOLKIT_VERSION, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"

cargo build --release -p prompting-btlm-backend -p btlm-miner \
  --features prompting-btlm-backend/cuda,btlm-miner/cuda --all-targets
miner="$CARGO_TARGET_DIR/release/btlm-miner"
libcuda=$(ldd "$miner" | awk '/libcuda\.so\.1/ { print $3 }')
[ -n "$libcuda" ] && [ "$libcuda" != not ] || fail "libcuda.so.1 of btlm-miner: $(ldd "$miner" | grep libcuda)"
case "$(readlink -f "$libcuda")" in
"$repo"/target/*) fail "libcuda.so.1 resolves to the link-time stub $libcuda, not the driver" ;;
esac
echo "gpu-check: libcuda.so.1 -> $libcuda"

echo "gpu-check: tests (reference outputs on cuda)"
BTLM_TEST_DEVICE=cuda cargo test --release -p prompting-btlm-backend --features cuda 2>&1 |
  tee "$logs/tests.log"

echo "gpu-check: btlm-miner on cuda"
tmp=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$miner" --dev --wallet.path "$tmp/wallets" --axon.port "$port" \
  --btlm.model_dir crates/btlm-backend/tests/fixtures/btlm-tiny --btlm.device cuda \
  >"$logs/miner.log" 2>&1 &
pid=$!
ok=0
for _ in $(seq 120); do
  if grep -q "serving on" "$logs/miner.log"; then
    ok=1
    break
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
rm -rf "$tmp"
[ "$ok" = 1 ] || fail "btlm-miner did not start serving on cuda: $(tail -5 "$logs/miner.log")"
grep "serving on" "$logs/miner.log"

echo "gpu-check: bench on cuda"
cargo run --release -p prompting-btlm-backend --features cuda --example bench -- \
  --device cuda --formats f32,bf16,f16 --layers "${BENCH_LAYERS:-4}" --skip-matmul 2>&1 |
  tee "$logs/bench.log"
if grep -q " failed: " "$logs/bench.log"; then
  fail "a bench format failed (see $logs/bench.log)"
fi
echo "gpu-check: passed (logs in $logs)"
