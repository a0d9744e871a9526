#!/usr/bin/env bash
# The BTLM miner under a memory squeeze: the real `btlm-miner` on a random checkpoint of
# BTLM-3B-8K's shape, inside a memory cgroup of CGROUP_MB, serving VALIDATORS validators
# whose prompts all differ (so that idle caches pile up to the cache budget), while another
# process in the same cgroup takes HOG_MB more, HOG_STEP_MB at a time, and holds it.
# Without a watch on the memory left the kernel kills the largest process of the cgroup
# (the miner) once the caches and the other process no longer fit; with it
# (`--btlm.memory_check_ms`, on by default) the engine drops idle caches and holds new ones
# back.
#
# Phases: `warm` (WARM seconds of load: the caches grow), `squeeze` (the other process
# takes its memory while the load goes on, SQUEEZE seconds). Prints, per phase, the
# validators' answers, the miner's RSS and cache gauges; then whether the miner survived,
# the cgroup's OOM kills, and the miner's memory warnings.
#
# Needs root and a writable memory cgroup (v1 `/sys/fs/cgroup/memory`, or v2
# `/sys/fs/cgroup` with the memory controller); the cgroup is removed at the end.
#
# Environment (all optional): LAYERS (32), FORMAT (q4k), CGROUP_MB (3584), HOG_MB (1280),
# HOG_STEP_MB (16, every 0.2 s: 80 MB/s; at 64 the miner is killed all the same, see
# docs/benchmarks.md, session 59), WARM (60), SQUEEZE (45), VALIDATORS (8), MESSAGE_BYTES
# (600), EXTRA_MINER_ARGS (e.g. "--btlm.memory_check_ms 0" for the miner without the
# watch), OUT (target/bench-results/btlm-memory-squeeze), BENCH_MODELS and PREBUILT (as
# btlm_soak.sh). Shared steps: benches/btlm_bench_lib.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=benches/btlm_bench_lib.sh
source benches/btlm_bench_lib.sh

LAYERS="${LAYERS:-32}"
FORMAT="${FORMAT:-q4k}"
CGROUP_MB="${CGROUP_MB:-3584}"
HOG_MB="${HOG_MB:-1280}"
HOG_STEP_MB="${HOG_STEP_MB:-16}"
WARM="${WARM:-60}"
SQUEEZE="${SQUEEZE:-45}"
VALIDATORS="${VALIDATORS:-8}"
MESSAGE_BYTES="${MESSAGE_BYTES:-600}"
EXTRA_MINER_ARGS="${EXTRA_MINER_ARGS:-}"
bench_models_dir
out="${OUT:-$root/target/bench-results/btlm-memory-squeeze}"
rm -rf "$out"
mkdir -p "$out"

# The cgroup: v1's memory hierarchy if mounted, else v2's root.
name="btlm-squeeze-$$"
if [ -d /sys/fs/cgroup/memory ]; then
  cg="/sys/fs/cgroup/memory/$name"
  mkdir "$cg"
  echo $(( CGROUP_MB << 20 )) >"$cg/memory.limit_in_bytes"
  oom_kills() { awk '$1 == "oom_kill" {print $2}' "$cg/memory.oom_control"; }
elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  cg="/sys/fs/cgroup/$name"
  mkdir "$cg"
  echo $(( CGROUP_MB << 20 )) >"$cg/memory.max"
  oom_kills() { awk '$1 == "oom_kill" {print $2}' "$cg/memory.events"; }
else
  echo "no writable memory cgroup here (needs root and cgroup v1 or v2 with memory)" >&2
  exit 2
fi
bench_binaries

random_model_and_validators "$LAYERS" "$VALIDATORS"

pid=""
hog=""
cleanup() {
  for p in $hog $pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT
port="$(free_port)"
log="$out/miner.log"
# Started inside the cgroup (a shell that moves itself there, then runs the miner).
# shellcheck disable=SC2016,SC2086
sh -c 'echo $$ >"$0/cgroup.procs"; exec "$@"' "$cg" \
  "$bin/btlm-miner" --metagraph.file "$out/metagraph.toml" --wallet.path "$wallet" \
  --axon.ip 127.0.0.1 --axon.port "$port" --miner.blacklist.min_request_period 0 \
  --btlm.model_dir "$model" $(format_flags "$FORMAT") --btlm.max_length 100 \
  --btlm.ignore_eos --btlm.stop "" $EXTRA_MINER_ARGS >"$log" 2>&1 &
pid=$!
wait_serving "$pid" "$log"

gauges() {
  metrics "$port" prompting_btlm_kv_reserved_bytes prompting_btlm_kv_idle_bytes \
    prompting_btlm_kv_limit_bytes | awk '{for (i = 1; i <= NF; i++) printf "%s%s", ($i == "nan" ? "nan" : sprintf("%.0f", $i / 1048576)), (i < NF ? " / " : "")}'
}
echo "btlm_memory_squeeze: $FORMAT, $LAYERS layers, cgroup of $CGROUP_MB MiB, another process taking $HOG_MB MiB, $VALIDATORS validators, miner args: ${EXTRA_MINER_ARGS:-none}"
echo
echo "| phase | answers / requests | miner alive | miner RSS MiB (peak) | caches reserved / idle / limit MiB | cgroup OOM kills |"
echo "| --- | --- | --- | --- | --- | ---: |"
for phase in warm squeeze; do
  seconds="$WARM"
  if [ "$phase" = squeeze ]; then
    seconds="$SQUEEZE"
    # shellcheck disable=SC2016
    sh -c 'echo $$ >"$0/cgroup.procs"; exec python3 -c "
import sys, time
step, total = int(sys.argv[1]) << 20, int(sys.argv[2]) << 20
held = []
while sum(map(len, held)) < total:
    held.append(bytearray(b\"x\" * step))
    time.sleep(0.2)
time.sleep(3600)
" "$1" "$2"' "$cg" "$HOG_STEP_MB" "$HOG_MB" &
    hog=$!
  fi
  "$bin/loadgen" --target "127.0.0.1:$port" --axon-hotkey "$miner_hotkey" --key-offset 1 \
    --hotkeys "$VALIDATORS" --concurrency "$VALIDATORS" --timeout 12 \
    --message-bytes "$MESSAGE_BYTES" --duration "$seconds" --requests 100000000 \
    --label "$phase" --json "$out/$phase.json" >"$out/$phase.txt" 2>&1 || true
  alive=yes
  kill -0 "$pid" 2>/dev/null || alive=no
  answers="$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['statuses'].get('200', 0), '/', d['requests'])" "$out/$phase.json" 2>/dev/null || echo "-")"
  rss="$(status_mb "$pid" VmRSS) ($(status_mb "$pid" VmHWM))"
  echo "| $phase | $answers | $alive | $rss | $(gauges) | $(oom_kills) |"
done
echo
echo "miner's memory lines:"
grep -E "memory left|memory are left|are held to|whole key/value cache budget" "$log" | cut -c1-400 || echo "(none)"
dmesg 2>/dev/null | grep -i "killed process" | tail -3 || true
