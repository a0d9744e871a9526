#!/usr/bin/env bash
# Fuzzes one target for SECONDS: scripts/fuzz.sh TARGET SECONDS [prompting-fuzz flags]
# TARGET: all bt_headers synapse_body btauth openai_request sse grpc_request body_hash
# (all: each target for SECONDS). Release build, stable toolchain (an in-process mutation
# fuzzer, crates/fuzz). The body_hash target compares with CPython: the bittensor 10.5 venv's
# python when scripts/setup-python.sh made it, else python3. Findings are saved under
# target/fuzz/findings; the exit status is 1 when there are any.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: $0 TARGET SECONDS [--execs N] [--seed S] [--python PATH]" >&2
    exit 2
fi
python=python3
if [ -x target/py/bt10/bin/python ]; then
    python=target/py/bt10/bin/python
fi
cargo build --release --quiet -p prompting-fuzz
exec target/release/prompting-fuzz "$1" "$2" --python "$python" "${@:3}"
