#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace
# (interop tests use the venvs made by scripts/setup-python.sh). Each step says what it does
# before it starts (some are silent for minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "==> $*" >&2; }
step "cargo fmt --check: formatting"
cargo fmt --all -- --check
step "cargo clippy -D warnings: lints (compiles every target; minutes on a fresh tree)"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo doc -D warnings: API docs of every crate (about a minute, prints nothing)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
step "client-only build: a validator depending on the client side gets no server, pipeline or clap"
scripts/check-client-deps.sh
step "import cycles: no crate's modules import each other in a cycle"
python3 scripts/check-import-cycles.py
step "cargo publish --dry-run: every crate packages for crates.io (needs the registry index)"
cargo publish --workspace --dry-run --no-verify --allow-dirty --quiet
step "AVX-512 kernels on emulated Sapphire Rapids and Ice Lake CPUs (bochscpu, dev build, quick cases: ~4 min)"
scripts/check-kernels-emulated.sh --dev --quick
step "cargo test --workspace: every test"
cargo test --workspace
step "done: all checks passed"
