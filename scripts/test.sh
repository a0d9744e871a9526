#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace
# (interop tests use the venvs made by scripts/setup-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
# A validator depending on the client side alone gets no server, miner pipeline or clap.
scripts/check-client-deps.sh
# Every crate packages for crates.io, internal dependencies by version (needs the registry index).
cargo publish --workspace --dry-run --no-verify --allow-dirty --quiet
cargo test --workspace
