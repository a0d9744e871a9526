#!/usr/bin/env bash
# What a client that is refused at once and asks again at once costs the BTLM miner, on a
# host where clients and miner share the cores (this 2-core VM): the real `btlm-miner` on a
# random checkpoint of BTLM-3B-8K's shape, phases of DURATION seconds each:
#
#   idle-hammer   one client (an unregistered hotkey, answered 403) in a closed loop with no
#                 pause, the miner otherwise idle: what a refusal costs the miner's request
#                 threads (`miner-worker`, the tokio runtime);
#   alone         VALIDATORS registered validators in a closed loop with no pause (a full
#                 batch), 100-byte messages, 12 s timeout;
#   hammer        the same validators and the hammering client;
#   hammer-nice   the same, the hammering client at `nice -n 19` (it then gets only the
#                 cores' leftovers, as a client on another host costs this one nothing).
#
# Per phase it prints the validators' answers a second, mean answer bytes and p50, the
# hammer's requests a second, and the CPU seconds a second of the miner's threads: the
# engine's (the process's total less its request threads', so that the step teams' helpers,
# which exit, are counted) and the request threads'.
#
# Not a timed benchmark: its numbers depend on the host, and on the clients sharing it.
#
# HAMMER_RATE (requests a second) makes the hammering client an open loop at that rate, as a
# remote client sends whatever it is answered: its own CPU is then the same whatever a refusal
# costs the miner, so two miners compare by what is left to the validators.
#
# Environment (all optional): LAYERS (32), FORMAT (q4k), DURATION (60 s), VALIDATORS (8),
# HAMMER_RATE (none: closed loop), PHASES ("idle-hammer alone hammer hammer-nice"),
# OUT (target/bench-results/btlm-refusal-cost),
# BENCH_MODELS and PREBUILT (as btlm_soak.sh). Shared steps: benches/btlm_bench_lib.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=benches/btlm_bench_lib.sh
source benches/btlm_bench_lib.sh

LAYERS="${LAYERS:-32}"
FORMAT="${FORMAT:-q4k}"
DURATION="${DURATION:-60}"
VALIDATORS="${VALIDATORS:-8}"
PHASES="${PHASES:-idle-hammer alone hammer hammer-nice}"
hammer_loop=(--concurrency 1)
hammer_says="closed loop"
if [ -n "${HAMMER_RATE:-}" ]; then
  hammer_loop=(--rate "$HAMMER_RATE")
  hammer_says="open loop at $HAMMER_RATE/s"
fi
bench_models_dir
out="${OUT:-$root/target/bench-results/btlm-refusal-cost}"
rm -rf "$out"
mkdir -p "$out"
bench_binaries

# Keys 1..=VALIDATORS registered validators; the hammer's key (200) is not registered.
random_model_and_validators "$LAYERS" "$VALIDATORS"

pid=""
cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
port="$(free_port)"
log="$out/miner.log"
# shellcheck disable=SC2046
"$bin/btlm-miner" --metagraph.file "$out/metagraph.toml" --wallet.path "$wallet" \
  --axon.ip 127.0.0.1 --axon.port "$port" --miner.blacklist.min_request_period 0 \
  --btlm.model_dir "$model" $(format_flags "$FORMAT") --btlm.max_length 100 >"$log" 2>&1 &
pid=$!
wait_serving "$pid" "$log"
# A validator's first request ranks at --miner.priority.default; ask once each first.
"$bin/loadgen" --target "127.0.0.1:$port" --axon-hotkey "$miner_hotkey" --key-offset 1 \
  --hotkeys "$VALIDATORS" --concurrency "$VALIDATORS" --requests "$VALIDATORS" --timeout 600 \
  --duration 600 --label warm-up >"$out/warm-up.txt" 2>&1

# cpu_ticks: the process's CPU ticks (user + system) and those of its `miner-worker` threads.
cpu_ticks() {
  local total workers=0 t
  total="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
  for t in /proc/"$pid"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = miner-worker ]; then
      workers=$(( workers + $(awk '{print $14 + $15}' "$t/stat" 2>/dev/null || echo 0) ))
    fi
  done
  echo "$total $workers"
}
hz="$(getconf CLK_TCK)"

echo "btlm_refusal_cost: $FORMAT, $LAYERS layers, $VALIDATORS validators, phases of $DURATION s, hammer in a $hammer_says, $(nproc) cores"
echo
echo "| phase | validators' answers/s | mean answer bytes | p50 s | hammer requests/s | engine CPU s/s | request threads CPU s/s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for phase in $PHASES; do
  pids=()
  if [ "$phase" != idle-hammer ]; then
    "$bin/loadgen" --target "127.0.0.1:$port" --axon-hotkey "$miner_hotkey" --key-offset 1 \
      --hotkeys "$VALIDATORS" --concurrency "$VALIDATORS" --timeout 12 --message-bytes 100 \
      --duration "$DURATION" --requests 100000000 --label "$phase" --json "$out/validators-$phase.json" \
      >"$out/validators-$phase.txt" 2>&1 &
    pids+=($!)
  fi
  nice_level=0
  [ "$phase" = hammer-nice ] && nice_level=19
  if [ "$phase" != alone ]; then
    nice -n "$nice_level" "$bin/loadgen" --target "127.0.0.1:$port" --axon-hotkey "$miner_hotkey" \
      --key-offset 200 --hotkeys 1 "${hammer_loop[@]}" --timeout 4 --duration "$DURATION" \
      --requests 100000000 --label hammer --json "$out/hammer-$phase.json" \
      >"$out/hammer-$phase.txt" 2>&1 &
    pids+=($!)
  fi
  read -r total0 workers0 < <(cpu_ticks)
  started="$(date +%s.%N)"
  for p in "${pids[@]}"; do wait "$p"; done
  read -r total1 workers1 < <(cpu_ticks)
  python3 - "$out" "$phase" "$started" "$(date +%s.%N)" "$hz" "$total0" "$total1" "$workers0" "$workers1" <<'EOF'
import json, os, sys
out, phase, t0, t1, hz = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
total0, total1, workers0, workers1 = map(float, sys.argv[6:10])
elapsed = t1 - t0
def load(name):
    path = os.path.join(out, f"{name}-{phase}.json")
    return json.load(open(path)) if os.path.exists(path) else None
v, h = load("validators"), load("hammer")
if v:
    ok = v["statuses"].get("200", 0)
    cols = [f"{ok / v['elapsed_s']:.2f}", f"{v['mean_completion_bytes']:.0f}",
            f"{v['latency_ok']['p50_ms'] / 1000:.2f}" if v.get("latency_ok") else "-"]
else:
    cols = ["-", "-", "-"]
cols.append(f"{h['requests'] / h['elapsed_s']:.0f}" if h else "-")
workers = (workers1 - workers0) / hz
cols += [f"{((total1 - total0) / hz - workers) / elapsed:.2f}", f"{workers / elapsed:.2f}"]
print(f"| {phase} | " + " | ".join(cols) + " |")
EOF
done
