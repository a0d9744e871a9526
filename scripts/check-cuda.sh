#!/usr/bin/env bash
# Builds the `cuda` feature on a machine without a GPU and runs the CPU tests of that build.
#
#   scripts/check-cuda.sh            install the toolchain (scripts/cuda-env.sh), build, test
#
# 1. Installs the pinned CUDA 13.4 wheels (nvcc, headers, cudart, cublas, curand, nvrtc) from
#    PyPI into target/cuda/13.4.92 and a link-time stub of the driver (libcuda); idempotent.
# 2. Builds btlm-backend and btlm-miner with `--features cuda` (all targets) into their own
#    build tree, target/cuda/build, so the default build is left alone. candle-kernels compiles
#    its CUDA kernels to PTX for CUDA_COMPUTE_CAP (default 80 = A100; set it to your GPU's,
#    e.g. 86, 89, 90; `nvcc --list-gpu-code` lists what nvcc 13.4 targets, 75 and up).
# 3. Runs the tests of those crates (they run on the CPU; btlm-miner's e2e test drives the
#    bittensor 10.5 venv, which this script makes first with scripts/setup-python.sh bt10,
#    idempotent) with the driver stub on the library path: it answers
#    CUDA_ERROR_NO_DEVICE, so the cuda-only tests check that an unavailable CUDA device is a
#    typed error and one line from btlm-miner; then `btlm-miner --btlm.device cuda` itself
#    must print one line naming CUDA_ERROR_NO_DEVICE and exit with 1.
#
# Takes long: see docs/benchmarks.md ("CUDA build"). Not part of CI (.ci/run) for that reason.
# On a machine with a GPU use scripts/gpu-check.sh instead.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh
start=$(date +%s)
cuda_env "$repo"

export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CARGO_TARGET_DIR="$repo/target/cuda/build"
features=(--features prompting-btlm-backend/cuda,btlm-miner/cuda)
crates=(-p prompting-btlm-backend -p btlm-miner)
echo "check-cuda: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR"

# (No clippy here: it would check every dependency a second time; the cuda-only code of our
# crates is the device opening in btlm-backend's args.rs and its tests.)
cargo build "${crates[@]}" "${features[@]}" --all-targets
echo "check-cuda: build done after $(($(date +%s) - start)) s"

# Run time: the wheels' libraries and the driver stub (no real driver on this machine).
scripts/setup-python.sh bt10
export LD_LIBRARY_PATH="$CUDA_LIB:$CUDA_LIB/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo test "${crates[@]}" "${features[@]}"

# The miner asked for the GPU it cannot find: exactly one short error line (no backtrace,
# even under RUST_BACKTRACE), exit code 1.
tmp=$(mktemp -d)
set +e
err=$(RUST_BACKTRACE=1 "$CARGO_TARGET_DIR/debug/btlm-miner" --dev --wallet.path "$tmp" --btlm.device cuda 2>&1)
code=$?
set -e
rm -rf "$tmp"
echo "check-cuda: btlm-miner --btlm.device cuda (exit $code): $err"
if [ "$code" != 1 ] || [ "$(printf '%s\n' "$err" | wc -l)" != 1 ] ||
  [[ "$err" != "btlm-miner: error: device: cannot open CUDA device 0: "*CUDA_ERROR_NO_DEVICE* ]] ||
  [ "${#err}" -gt 300 ]; then
  echo "check-cuda: expected one line naming CUDA_ERROR_NO_DEVICE and exit code 1" >&2
  exit 1
fi
echo "check-cuda: passed in $(($(date +%s) - start)) s"
