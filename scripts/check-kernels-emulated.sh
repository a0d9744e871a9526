#!/usr/bin/env bash
# Runs the AVX-512 and AMX kernels of prompting-btlm-backend on an emulated Sapphire Rapids
# core and compares every case with the scalar reference (pass/fail per case):
#
#   scripts/check-kernels-emulated.sh [--dev] [--path avx512|amx|all] [--quick] [--filter TEXT]
#
# --dev: the dev-profile build of the kernels (reuses `cargo test`'s dependencies; slower to
# emulate, and the code differs from release: run the default release check for a verdict).
#
# The emulator is Bochs's CPU as a library (PyPI bochscpu-python 0.4.0, its
# `sapphire_rapids` model); scripts/emulated/spr_emulator.py runs the kernels of
# examples/emulated_kernels.rs (feature `emulation`, release build) inside this process's
# own address space and emulates the AMX tile instructions, which that Bochs build lacks.
# Installs into target/emulated/ (a venv with pinned packages, a glibc 2.38 shim when the
# system glibc is older). Not part of CI: about 10 minutes on 2 cores (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$root/target/emulated
mkdir -p "$dir"

# Python 3.11: the only CPython the bochscpu-python 0.4.0 wheel is built for.
py=""
for cand in python3.11 "$(command -v python3 || true)"; do
    if [ -n "$cand" ] && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        py=$cand
        break
    fi
done
[ -n "$py" ] || { echo "check-kernels-emulated: needs Python 3.11 (bochscpu-python 0.4.0 wheels)"; exit 1; }
if [ ! -x "$dir/venv/bin/python" ]; then
    "$py" -m venv "$dir/venv"
fi
if ! "$dir/venv/bin/python" -c 'import bochscpu, numpy' 2>/dev/null; then
    # bochscpu imports only with the shim on glibc < 2.38: install first, check below.
    "$dir/venv/bin/pip" install --quiet bochscpu-python==0.4.0 numpy==2.2.6
fi

preload=""
if ! "$dir/venv/bin/python" -c 'import bochscpu' 2>/dev/null; then
    cc -shared -fPIC -O2 -o "$dir/glibc238_shim.so" scripts/emulated/glibc238_shim.c
    preload=$dir/glibc238_shim.so
    LD_PRELOAD=$preload "$dir/venv/bin/python" -c 'import bochscpu' \
        || { echo "check-kernels-emulated: bochscpu does not load"; exit 1; }
fi

profile=release
if [ "${1:-}" = "--dev" ]; then
    profile=dev
    shift
fi
nice -n 19 cargo build --quiet --profile "$profile" -p prompting-btlm-backend \
    --features emulation --example emulated_kernels
out=release
[ "$profile" = release ] || out=debug
lib=$root/target/$out/examples/libemulated_kernels.so

start=$(date +%s)
status=0
LD_PRELOAD=$preload nice -n 19 "$dir/venv/bin/python" scripts/emulated/check_kernels.py "$lib" "$@" \
    2> >(grep -v -e '^nanobind: leaked' -e '^ - leaked' -e 'reference counting issue' >&2) \
    || status=$?
echo "check-kernels-emulated: $(( $(date +%s) - start )) s (status $status)"
exit $status
