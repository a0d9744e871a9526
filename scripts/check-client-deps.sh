#!/usr/bin/env bash
# A validator that only calls miners depends on
#   prompting-transport = { default-features = false, features = ["client"] }
# This checks that such a build pulls no HTTP/gRPC server, no miner pipeline and no clap,
# and that examples/validator.rs (a minimal validator) builds that way.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p prompting-transport --no-default-features -F client -e normal,features --prefix none)
status=0
for forbidden in '^axum ' '^prompting-miner ' '^clap ' '^prometheus-client ' \
    '^tonic feature "server"' '^tonic feature "router"' '^hyper feature "server"' \
    '^hyper-util feature "server'; do
    if grep -q -- "$forbidden" <<<"$tree"; then
        echo "check-client-deps: the client-only build pulls ${forbidden#^}" >&2
        status=1
    fi
done
if [ "$status" -ne 0 ]; then
    echo "see: cargo tree -p prompting-transport --no-default-features -F client -e normal,features -i <crate>" >&2
    exit "$status"
fi
cargo build -p prompting-transport --no-default-features -F client --example validator --quiet
echo "check-client-deps: the client side builds alone (no server, miner or clap)"
