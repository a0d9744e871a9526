#!/usr/bin/env bash
# Soak test of the BTLM miner: the real `btlm-miner` binary on a random checkpoint of
# BTLM-3B-8K's shape under a long mixed load, checked for what an operator needs of a miner
# that runs for days: it never falls over, its memory stays within its budget and stops
# growing, every request is answered or refused cleanly, and answers do not drift.
#
#   1. starts btlm-miner with the operator's defaults but a small key/value cache budget
#      (KV_MB), so that the pool fills early and then drops, recycles and copies caches;
#   2. asks three reference prompts while it is idle, as the first validator (the `dendrite`
#      CLI: legacy synapse, btauth/1, gRPC streaming) and keeps their answers;
#   3. for DURATION seconds runs four loads at once (`loadgen`):
#      - validators: legacy protocol, 4 in flight, THINK s between an answer and the next
#        question, a context shared per hotkey (prefix reuse);
#      - conversations: btauth/1, 2 in flight, follow-ups carrying earlier turns;
#      - impatient long prompts: one at a time, ~3 KB messages with a 4 s timeout, mostly
#        refused on arrival, else cut short or dropped by their client mid-answer
#        (cancellation frees their slot and cache);
#      - a flood of low-stake callers, open loop, FLOOD_RATE a second (preempted and
#        refused);
#      (at 32 layers on 2 cores this mix keeps the miner at its limit: answers run to
#      --miner.answer_margin_ms before their 12 s, and a few validator and conversation
#      requests are refused because their prompts could not run in time; heavier mixes
#      get more refused, docs/benchmarks.md, session 45);
#      every CHECK_EVERY seconds the reference prompts are asked again, batched with the
#      load, and every SAMPLE_EVERY seconds the miner's RSS and /metrics are sampled;
#   4. once the loads end, waits for the engine to drain, asks the reference prompts once
#      more and checks:
#      - the miner is alive, logged no panic and failed no request;
#      - every reference answer (idle, under load, after) equals the first, bit for bit
#        (greedy decoding; batching and prefix reuse must not change answers);
#      - nothing runs or waits, no cache is reserved, after the drain;
#      - peak RSS <= RSS after the first answers + KV_MB + RSS_SLACK_MB;
#      - RSS stops growing once the cache budget is full (90% of KV_MB in use or idle):
#        over the samples from then on, the last quarter's peak is within 5% (+64 MiB) of
#        the second quarter's (a leak grows through the whole run); not checked when fewer
#        than 8 samples follow;
#      - no load saw an internal error: its failures are refusals (503) and, for the
#        impatient and the flood, their own timeouts; the validators and conversations got
#        at least MIN_SUCCESS of their answers.
#   Prints a summary (also $OUT/summary.md) and exits 1 if a check failed.
#
# Not a timed benchmark: its times depend on the host; what it checks does not.
#
# Environment (all optional):
#   LAYERS (32), FORMAT (q4k: q4k, q8_0, f16, bf16, f32), TOKENS (100: --btlm.max_length),
#   DURATION (1200 s), KV_MB (1024), CHECK_EVERY (180 s), SAMPLE_EVERY (10 s),
#   RSS_SLACK_MB (1024), MIN_SUCCESS (0.9: the validators' and conversations' least share
#   of answers), THINK (4 s: each client's pause between an answer and its next question,
#   but the flood's), FLOOD_RATE (1 request a second), EXTRA_MINER_ARGS, OUT (target/bench-results/btlm-soak),
#   BENCH_MODELS (as btlm_e2e.sh), PREBUILT (a folder holding release builds of btlm-miner,
#   dendrite, loadgen, bench-identities and examples/write_random_model).
# Shared steps: benches/btlm_bench_lib.sh.
#
# Example: DURATION=1800 bash benches/btlm_soak.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=benches/btlm_bench_lib.sh
source "$root/benches/btlm_bench_lib.sh"

LAYERS="${LAYERS:-32}"
FORMAT="${FORMAT:-q4k}"
TOKENS="${TOKENS:-100}"
DURATION="${DURATION:-1200}"
KV_MB="${KV_MB:-1024}"
CHECK_EVERY="${CHECK_EVERY:-180}"
SAMPLE_EVERY="${SAMPLE_EVERY:-10}"
RSS_SLACK_MB="${RSS_SLACK_MB:-1024}"
MIN_SUCCESS="${MIN_SUCCESS:-0.9}"
THINK="${THINK:-4}"
FLOOD_RATE="${FLOOD_RATE:-1}"
EXTRA_MINER_ARGS="${EXTRA_MINER_ARGS:-}"
bench_models_dir
out="${OUT:-$root/target/bench-results/btlm-soak}"
mkdir -p "$out"
bench_binaries

model="$BENCH_MODELS/btlm-random-${LAYERS}l"
"$bin/examples/write_random_model" --layers "$LAYERS" --out "$model"

# Keys: 0 the miner, 1 the validator asking the reference prompts (its own wallet),
# 2..=11 the loads' validators, 12.. the flood's low-stake callers.
wallet="$out/wallet"
miner_hotkey="$("$bin/bench-identities" --wallet-path "$wallet" --metagraph "$out/metagraph.toml" \
  --clients 64 --validators 11 --validator-stake 10000 --client-stake 1 --validator-wallet)"

format_flags="$(format_flags "$FORMAT")"

pid=""
loads=()
cleanup() {
  for p in "${loads[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
port="$(free_port)"
log="$out/miner.log"
: >"$log"
# shellcheck disable=SC2086
"$bin/btlm-miner" --metagraph.file "$out/metagraph.toml" --wallet.path "$wallet" \
  --axon.ip 127.0.0.1 --axon.port "$port" --axon.max_request_timeout 3600 \
  --miner.blacklist.min_request_period 0 \
  --btlm.model_dir "$model" $format_flags --btlm.max_length "$TOKENS" \
  --btlm.kv_cache_mb "$KV_MB" $EXTRA_MINER_ARGS >"$log" 2>&1 &
pid=$!
started=$SECONDS
wait_serving "$pid" "$log"
echo "== $FORMAT, $LAYERS layers: loaded in $(( SECONDS - started )) s; soak of $DURATION s, KV budget $KV_MB MiB"

failures=()
fail() { failures+=("$1"); echo "FAIL: $1" >&2; }
rss_mb() { status_mb "$pid" VmRSS; }

# The reference prompts: one per protocol the miner serves, asked as the validator.
prompts=(
  "What is the capital of France? Answer in one sentence."
  "Explain, step by step, why the sky appears blue during the day and red at sunset."
  "Write a short story about a lighthouse keeper who finds a message in a bottle."
)
protocols=(legacy btauth grpc)
# ask_refs TAG: asks the three prompts (one after another) and writes $out/ref-TAG-I.txt.
ask_refs() {
  local tag="$1" i stream
  for i in 0 1 2; do
    stream=""
    [ "${protocols[$i]}" = grpc ] && stream="--stream"
    # shellcheck disable=SC2086
    if ! "$bin/dendrite" --axon "127.0.0.1:$port" --axon.hotkey "$miner_hotkey" \
      --wallet.path "$wallet" --wallet.name validator --protocol "${protocols[$i]}" $stream \
      --system "You are a helpful assistant." --timeout 600 "${prompts[$i]}" \
      >"$out/ref-$tag-$i.txt" 2>"$out/ref-$tag-$i.err"; then
      fail "reference prompt $i ($tag, ${protocols[$i]}) failed: $(head -c 300 "$out/ref-$tag-$i.err")"
    elif [ "$tag" != first ] && ! cmp -s "$out/ref-first-$i.txt" "$out/ref-$tag-$i.txt"; then
      fail "reference prompt $i ($tag, ${protocols[$i]}) answered differently than at first"
    fi
  done
}
ask_refs first
for i in 0 1 2; do
  [ -s "$out/ref-first-$i.txt" ] || fail "reference prompt $i gave an empty answer"
done
base_rss="$(rss_mb)"
echo "   reference answers kept; RSS $base_rss MiB"

# Every load's validator asks once first: a hotkey's first request ranks at
# --miner.priority.default, later ones by its stake (what a validator running for a while
# gets).
"$bin/loadgen" --target "127.0.0.1:$port" --axon-hotkey "$miner_hotkey" --key-offset 2 \
  --hotkeys 10 --concurrency 10 --requests 10 --timeout 600 --duration 600 --label warm-up \
  >"$out/warm-up.txt" 2>&1 || fail "the warm-up failed: $(tail -3 "$out/warm-up.txt")"

load() {
  local name="$1"
  shift
  "$bin/loadgen" --target "127.0.0.1:$port" --axon-hotkey "$miner_hotkey" \
    --duration "$DURATION" --requests 100000000 --label "$name" --json "$out/load-$name.json" "$@" \
    >"$out/load-$name.txt" 2>&1 &
  loads+=($!)
}
load validators --key-offset 2 --hotkeys 4 --concurrency 4 --think "$THINK" --timeout 12 \
  --message-bytes 100 --shared-context-bytes 400
load conversations --protocol btauth --key-offset 6 --hotkeys 2 --concurrency 2 --think "$THINK" \
  --timeout 12 --conversation-turns 4 --message-bytes 50
load impatient --key-offset 8 --hotkeys 2 --concurrency 1 --think "$THINK" --timeout 4 \
  --message-bytes 3000
load flood --key-offset 12 --hotkeys 40 --rate "$FLOOD_RATE" --timeout 12

samples="$out/samples.tsv"
echo -e "t_s\trss_mb\trunning\twaiting\tkv_reserved_bytes\tkv_idle_bytes\tcompleted\tcancelled\tfailed\theap_free_bytes\theap_trims" >"$samples"
soak_start=$SECONDS
next_check=$(( soak_start + CHECK_EVERY ))
checks=0
while (( SECONDS - soak_start < DURATION )); do
  if ! kill -0 "$pid" 2>/dev/null; then fail "the miner exited during the soak"; break; fi
  read -r running waiting reserved idle completed cancelled failed heap_free heap_trims < <(metrics "$port" \
    prompting_btlm_running_sequences prompting_btlm_waiting_requests \
    prompting_btlm_kv_reserved_bytes prompting_btlm_kv_idle_bytes \
    'prompting_btlm_requests_total{outcome="completed"}' \
    'prompting_btlm_requests_total{outcome="cancelled"}' \
    'prompting_btlm_requests_total{outcome="failed"}' \
    prompting_btlm_heap_free_bytes prompting_btlm_heap_trims_total)
  echo -e "$(( SECONDS - soak_start ))\t$(rss_mb)\t$running\t$waiting\t$reserved\t$idle\t$completed\t$cancelled\t$failed\t$heap_free\t$heap_trims" >>"$samples"
  if (( SECONDS >= next_check && SECONDS - soak_start < DURATION - 60 )); then
    checks=$(( checks + 1 ))
    ask_refs "load$checks"
    next_check=$(( SECONDS + CHECK_EVERY ))
  fi
  sleep "$SAMPLE_EVERY"
done
for p in "${loads[@]}"; do wait "$p" || fail "loadgen $p exited with an error"; done
loads=()

# Drain: whatever the loads left running ends within its token limit or deadline.
drained=""
for _ in $(seq 1 120); do
  read -r running waiting reserved < <(metrics "$port" prompting_btlm_running_sequences \
    prompting_btlm_waiting_requests prompting_btlm_kv_reserved_bytes)
  if [ "$running" = 0 ] && [ "$waiting" = 0 ] && [ "$reserved" = 0 ]; then drained=1; break; fi
  sleep 1
done
[ -n "$drained" ] || fail "not drained 120 s after the loads: running $running, waiting $waiting, reserved $reserved bytes"
if kill -0 "$pid" 2>/dev/null; then
  ask_refs after
else
  fail "the miner exited"
fi
grep -q "panicked" "$log" && fail "the miner's log has a panic: $(grep -m1 panicked "$log")"
failed="$(metrics "$port" 'prompting_btlm_requests_total{outcome="failed"}')"
[ "$failed" = 0 ] || fail "the engine failed $failed requests (a step that failed or panicked)"
peak="$(status_mb "$pid" VmHWM)"
read -r trims released < <(metrics "$port" prompting_btlm_heap_trims_total \
  prompting_btlm_heap_released_bytes_total)
limit=$(( base_rss + KV_MB + RSS_SLACK_MB ))
[ "$peak" != nan ] && (( peak > limit )) && fail "peak RSS $peak MiB over $limit (after the first answers $base_rss + KV $KV_MB + slack $RSS_SLACK_MB)"
# Memory may grow until the cache budget is full; from then on it must level off.
growth="$(python3 - "$samples" "$KV_MB" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["rss_mb"] != "nan"]
budget = float(sys.argv[2]) * 2**20
def pooled(r):
    try:
        return float(r["kv_reserved_bytes"]) + float(r["kv_idle_bytes"])
    except ValueError:
        return 0.0
full = next((i for i, r in enumerate(rows) if pooled(r) >= 0.9 * budget), len(rows))
rss = [float(r["rss_mb"]) for r in rows[full:]]
if len(rss) < 8:
    print(f"note: growth not checked, {len(rss)} samples after the cache budget filled")
    sys.exit(0)
half = max(rss[len(rss) // 4 : len(rss) // 2])
last = max(rss[3 * len(rss) // 4 :])
if last > half * 1.05 + 64:
    print(f"RSS still growing with the cache budget full: last quarter's peak {last:.0f} MiB against {half:.0f} in the second quarter")
EOF
)"
case "$growth" in
  "") ;;
  note:*) echo "$growth" ;;
  *) fail "$growth" ;;
esac

summary="$out/summary.md"
python3 - "$out" "$FORMAT" "$LAYERS" "$DURATION" "$KV_MB" "$base_rss" "$peak" "$checks" \
  "$trims" "$released" >"$summary" <<'EOF'
import json, os, re, sys
from collections import Counter
out, fmt, layers, duration, kv, base, peak, checks, trims, released = sys.argv[1:]
print(f"btlm_soak: {fmt}, {layers} layers, {duration} s, KV budget {kv} MiB, {os.cpu_count()} cores")
print()
print("| load | requests | answered | p50 s | p99 s | statuses | errors |")
print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
for name in ["validators", "conversations", "impatient", "flood"]:
    try:
        r = json.load(open(f"{out}/load-{name}.json"))
    except OSError:
        print(f"| {name} | (no report) | | | | | |")
        continue
    lat = r.get("latency_ok") or {}
    ok = r["statuses"].get("200", 0)
    p50 = f'{lat["p50_ms"] / 1000:.2f}' if "p50_ms" in lat else "-"
    p99 = f'{lat["p99_ms"] / 1000:.2f}' if "p99_ms" in lat else "-"
    # Errors by kind: their figures (seconds left and needed) left out.
    kinds = Counter()
    for e, n in r["errors"].items():
        kinds[re.sub(r"\d+\.\d+", "N", e)] += n
    errors = "; ".join(f"{n} × {e}" for e, n in kinds.most_common()) or "-"
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
    print(f'| {name} | {r["requests"]} | {ok} | {p50} | {p99} | {statuses} | {errors} |')
print()
print(f"RSS after the first answers {base} MiB, peak {peak} MiB; reference prompts asked again {checks} times under load and once after")
try:
    print(f"free heap memory given back to the OS {float(trims):.0f} times, {float(released) / 2**20:.0f} MiB in all (--btlm.heap_slack_mb)")
except ValueError:
    print("free heap memory given back: not reported (a miner without --btlm.heap_slack_mb)")
EOF
cat "$summary"

# Each load's failures must be of the kinds it causes: refusals (503: overloaded,
# preempted by a higher priority, or not answerable before the deadline) and, for the
# impatient and the low-stake flood, their own timeouts; never an internal error. The
# validators and conversations, which the miner can serve, get at least MIN_SUCCESS of
# their answers.
python3 - "$out" "$MIN_SUCCESS" >>"$summary" <<'EOF' || fail "a load failed in a way its load does not explain (see summary.md)"
import json, sys
out, min_success = sys.argv[1], float(sys.argv[2])
bad = []
for name in ["validators", "conversations", "impatient", "flood"]:
    r = json.load(open(f"{out}/load-{name}.json"))
    allowed = {"200", "503"} | ({"408"} if name in ("impatient", "flood") else set())
    others = {k: v for k, v in r["statuses"].items() if k not in allowed}
    if others:
        bad.append(f"{name}: {others} {r['errors']}")
    if name in ("validators", "conversations") and r["success_rate"] < min_success:
        bad.append(f"{name}: {r['success_rate']:.1%} answered")
if bad:
    print("\nUnexplained failures: " + "; ".join(bad))
    sys.exit(1)
EOF
if (( ${#failures[@]} )); then
  { echo; echo "FAILED:"; printf -- '- %s\n' "${failures[@]}"; } | tee -a "$summary"
  exit 1
fi
echo "all soak checks passed" | tee -a "$summary"
