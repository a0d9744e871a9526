#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace
# (interop tests use the venvs made by scripts/setup-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace
