#!/usr/bin/env bash
# Side by side on this machine, loopback only, one run:
#   (a) our axon with an echo backend (echo-server), (b) bittensor 10.5's Python Axon with an
#   equivalent echo forward; the same load generator and settings drive both, one after the
#   other, and the throughput ratio is printed. Then: p99 at half our max rate, the overload
#   scenario (a low-stake flood at 10x capacity vs a high-stake validator's trickle), and the
#   idle RSS and start-up time of openai-miner (when built).
#
# Usage: benches/side_by_side.sh            (CONC=16 DUR=10 to change the load)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
CONC="${CONC:-16}"
DUR="${DUR:-10}"
out="$root/target/bench-results"
mkdir -p "$out"
scripts/setup-python.sh >/dev/null
cargo build --release --quiet -p prompting-benches --bins
cargo build --release --quiet --bin openai-miner 2>/dev/null || echo "(openai-miner not built: its figures are skipped)"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# Starts a server command in the background; waits for its "listening ADDR HOTKEY" line.
start() {
  local log="$1"; shift
  "$@" >"$log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1 300); do
    if grep -q '^listening ' "$log"; then grep '^listening ' "$log" | head -1; return 0; fi
    sleep 0.1
  done
  echo "server did not start: $*" >&2; cat "$log" >&2; exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

echo "== throughput, closed loop, $CONC in flight, ${DUR}s each"
read -r _ rust_addr rust_hotkey < <(start "$out/echo-server.log" "$bin/echo-server" --port 0)
"$bin/loadgen" --target "$rust_addr" --axon-hotkey "$rust_hotkey" --concurrency "$CONC" \
  --duration "$DUR" --label "rust echo axon" --json "$out/rust.json"
py_port="$(free_port)"
wallet_dir="$(mktemp -d)"
read -r _ py_addr py_hotkey < <(start "$out/python-axon.log" \
  target/py/bt10/bin/python benches/python/echo_axon.py "$py_port" "$wallet_dir")
"$bin/loadgen" --target "$py_addr" --axon-hotkey "$py_hotkey" --concurrency "$CONC" \
  --duration "$DUR" --label "python bittensor 10.5 axon" --json "$out/python.json"
rust_rps="$(field "$out/rust.json" throughput_rps)"
py_rps="$(field "$out/python.json" throughput_rps)"
python3 -c "print(f'ratio rust/python throughput: {float($rust_rps)/max(float($py_rps),1e-9):.1f}x')"

echo "== latency at half our max rate"
half="$(python3 -c "print(max(1.0, float($rust_rps)/2))")"
"$bin/loadgen" --target "$rust_addr" --axon-hotkey "$rust_hotkey" --rate "$half" \
  --duration "$DUR" --label "rust at half max rate" --json "$out/rust-half.json"

echo "== overload: backend capacity 4 x 20 ms = 200 req/s; flood 2000 req/s from 8 low-stake keys"
read -r _ ov_addr ov_hotkey < <(start "$out/overload.log" "$bin/echo-server" --port 0 \
  --delay-ms 20 --max-concurrent 4 --max-queue 64)
"$bin/loadgen" --target "$ov_addr" --axon-hotkey "$ov_hotkey" --key-offset 2 --hotkeys 8 \
  --rate 2000 --duration "$DUR" --timeout 2 --label "flood (stake 1)" --json "$out/flood.json" &
flood=$!
"$bin/loadgen" --target "$ov_addr" --axon-hotkey "$ov_hotkey" --key-offset 1 --hotkeys 1 \
  --rate 5 --duration "$DUR" --timeout 2 --label "validator (stake 10000)" --json "$out/validator.json"
wait "$flood"

if [ -x "$bin/openai-miner" ]; then
  echo "== openai-miner --dev behind an instant upstream, closed loop, $CONC in flight"
  read -r _ up_addr _ < <(start "$out/upstream.log" "$bin/instant-upstream")
  port="$(free_port)"
  wallet_dir="$(mktemp -d)"
  "$bin/openai-miner" --dev --wallet.path "$wallet_dir" --axon.port "$port" \
    --openai.base_url "http://$up_addr/v1" --miner.blacklist.min_request_period 0 \
    >"$out/openai-miner-load.log" 2>&1 &
  pids+=("$!")
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.01; done
  hotkey="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ss58Address'])" "$wallet_dir/default/hotkeys/default")"
  "$bin/loadgen" --target "127.0.0.1:$port" --axon-hotkey "$hotkey" --concurrency "$CONC" \
    --duration "$DUR" --label "openai-miner + instant upstream" --json "$out/openai-miner.json"
fi

if [ -x "$bin/openai-miner" ]; then
  echo "== openai-miner: start-up to listening, idle RSS"
  wallet_dir="$(mktemp -d)"
  # Starts the miner, prints ms from spawn to the port accepting; leaves it running.
  start_miner() {
    local port="$1"
    local t0 t1
    t0="$(date +%s%N)"
    "$bin/openai-miner" --dev --wallet.path "$wallet_dir" --axon.port "$port" \
      --openai.base_url http://127.0.0.1:9/v1 >"$out/openai-miner.log" 2>&1 &
    local miner_pid=$!
    echo "$miner_pid" >"$out/openai-miner.pid"
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
      kill -0 "$miner_pid" 2>/dev/null || { cat "$out/openai-miner.log"; exit 1; }
      sleep 0.002
    done
    t1="$(date +%s%N)"
    echo $(( (t1 - t0) / 1000000 ))
  }
  cold="$(start_miner "$(free_port)")"
  kill "$(cat "$out/openai-miner.pid")"
  sleep 0.5
  warm="$(start_miner "$(free_port)")"
  miner_pid="$(cat "$out/openai-miner.pid")"
  pids+=("$miner_pid")
  echo "start to listening: ${cold} ms first run (creates the dev hotkey), ${warm} ms with the hotkey on disk"
  sleep 2
  echo "idle RSS: $(awk '/VmRSS/ {print $2/1024 " MB"}' "/proc/$miner_pid/status")"
fi
