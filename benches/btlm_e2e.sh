#!/usr/bin/env bash
# End-to-end BTLM serving benchmark: the real `btlm-miner` binary on a random checkpoint of
# BTLM-3B-8K's shape, queried through the legacy axon protocol by `loadgen` (signed
# `Prompting` requests from registered validator hotkeys), 100-token completions.
#
#   1. writes the model once (config, tokenizer of the full vocabulary, bf16 weights) under
#      $BENCH_MODELS (default /work/bench-models when it exists, else target/bench-models);
#   2. for each format: starts btlm-miner (--metagraph.file with the load generator's keys,
#      --btlm.ignore_eos and no stop strings so every answer is exactly $TOKENS tokens), then
#      for each concurrency N: N validators in a closed loop, $ROUNDS answers each:
#      p50/p99 time to the full answer and aggregate tokens/s (the tokens the miner
#      generated meanwhile, from its /metrics, over the run's time: answers cut short or
#      refused count what they cost, not $TOKENS);
#   3. the flood: low-stake callers at $FLOOD_X x the miner's measured capacity while
#      $FLOOD_VALIDATORS high-stake validators (default 1) each ask one question at a time,
#      all with the validator timeout ($TIMEOUT s); the figures are the validators' success
#      rate within the timeout (more validators: more samples of it per minute, each
#      validator also competing with the others) and the flood's goodput (answers within the
#      timeout per second, against the capacity).
#
# Usage (one command; heavy: take the bench lock on a shared machine):
#   flock /work/.bench.lock benches/btlm_e2e.sh
#   LAYERS=4 FORMATS="q4k f32" CONC="1 8" benches/btlm_e2e.sh      # quick iteration
# Knobs (environment): LAYERS (32), FORMATS ("f32 bf16 q8_0 q4k"), CONC ("1 2 4 8"),
#   ROUNDS (2), TOKENS (100), MESSAGE_BYTES (0: a ~30-token prompt; the random model's
#   tokenizer merges byte pairs only, ~0.59 tokens per byte of the filler: 900 ≈ 530 prompt
#   tokens, 2400 ≈ 1430), SHARED_CONTEXT_BYTES (0: each validator's messages start with
#   a context of that many bytes of its own, as a validator asks a follow-up and an answer
#   of one context; the miner's prefix reuse then runs only the rest of each prompt after
#   the warm-up: the summary gives the prompt tokens it kept), CONVERSATION_TURNS (0: each
#   validator's requests continue a conversation, its earlier questions and the miner's
#   answers before the new question, up to that many earlier turns, then a new one: the
#   miner's prefix reuse keeps the earlier answers' tokens too), THINK (0: seconds each
#   validator waits after an answer before its next question, so that validators that
#   start together ask in rounds with the miner idle between them; the aggregate tok/s
#   then counts that idle time too), MAX_BATCH (8), CONC_STAKES ("": every validator of
#   the concurrency runs has stake 1; else their stakes in key order, comma-separated,
#   e.g. "8,7,6,5,4,3,2,1": validators of several stakes, which the miner ranks by stake
#   and the engine's deadline guard weighs against each other; the flood's callers are
#   the same keys, so run it with FLOOD_FORMAT=""),
#   TIMEOUT (12), ANSWER_MARGIN_MS (0: the miner's --miner.answer_margin_ms; at 0 every
#   answer is whole, so the figures are times to the full answer; the miner's default, 500,
#   sends the text so far that long before a request's deadline instead: then the
#   validators ask with the timeout $TIMEOUT and the "cut short" column counts those
#   answers, from the miner's /metrics),
#   FLOOD_FORMAT (q4k; "" skips the flood), FLOOD_LAYERS ($LAYERS),
#   FLOOD_TOKENS ($TOKENS), FLOOD_SECONDS (120), FLOOD_X (10), FLOOD_VALIDATORS (1),
#   EXTRA_MINER_ARGS,
#   OUT (the results folder, default target/bench-results/btlm-e2e),
#   PREBUILT (a folder holding release builds of btlm-miner, dendrite, loadgen,
#   bench-identities and examples/write_random_model: run those instead of building).
# Shared steps: benches/btlm_bench_lib.sh.
# Results: $OUT/{summary.md,*.json,*.log}.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=benches/btlm_bench_lib.sh
source "$root/benches/btlm_bench_lib.sh"
LAYERS="${LAYERS:-32}"
FORMATS="${FORMATS:-f32 bf16 q8_0 q4k}"
CONC="${CONC:-1 2 4 8}"
ROUNDS="${ROUNDS:-2}"
TOKENS="${TOKENS:-100}"
MESSAGE_BYTES="${MESSAGE_BYTES:-0}"
SHARED_CONTEXT_BYTES="${SHARED_CONTEXT_BYTES:-0}"
CONVERSATION_TURNS="${CONVERSATION_TURNS:-0}"
THINK="${THINK:-0}"
MAX_BATCH="${MAX_BATCH:-8}"
TIMEOUT="${TIMEOUT:-12}"
ANSWER_MARGIN_MS="${ANSWER_MARGIN_MS:-0}"
# The validators' timeout in the concurrency runs: none to speak of when every answer is
# whole (the time to the full answer is measured), else the validator's.
conc_timeout=3600
[ "$ANSWER_MARGIN_MS" != 0 ] && conc_timeout="$TIMEOUT"
FLOOD_FORMAT="${FLOOD_FORMAT-q4k}"
FLOOD_LAYERS="${FLOOD_LAYERS:-$LAYERS}"
FLOOD_TOKENS="${FLOOD_TOKENS:-$TOKENS}"
FLOOD_SECONDS="${FLOOD_SECONDS:-120}"
FLOOD_X="${FLOOD_X:-10}"
FLOOD_VALIDATORS="${FLOOD_VALIDATORS:-1}"
CONC_STAKES="${CONC_STAKES:-}"
# Keys: 0 the miner, 1..=FLOOD_VALIDATORS the high-stake validators, then low-stake clients.
clients_from=$(( 1 + FLOOD_VALIDATORS ))
EXTRA_MINER_ARGS="${EXTRA_MINER_ARGS:-}"
bench_models_dir
out="${OUT:-$root/target/bench-results/btlm-e2e}"
mkdir -p "$out"
bench_binaries

model_dir() { echo "$BENCH_MODELS/btlm-random-${1}l"; }
for layers in $(echo "$LAYERS $FLOOD_LAYERS" | tr ' ' '\n' | sort -u); do
  "$bin/examples/write_random_model" --layers "$layers" --out "$(model_dir "$layers")"
done

wallet="$out/wallet"
miner_hotkey="$("$bin/bench-identities" --wallet-path "$wallet" --metagraph "$out/metagraph.toml" \
  --clients $(( 64 + FLOOD_VALIDATORS )) --validators "$FLOOD_VALIDATORS" \
  --validator-stake 10000 --client-stake 1 ${CONC_STAKES:+--client-stakes "$CONC_STAKES"})"

pid=""
cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split('.'): v=(v or {}).get(k)
print(v if v is not None else 'nan')" "$1" "$2"; }

# start_miner FORMAT LAYERS TOKENS LOG: starts btlm-miner, waits until it listens.
start_miner() {
  local format="$1" layers="$2" tokens="$3" log="$4"
  port="$(free_port)"
  # Empty the log first: the miner's shell truncates it only once it runs, and a log of an
  # earlier run in the same OUT folder would otherwise read as "serving on" at once.
  : >"$log"
  # shellcheck disable=SC2046,SC2086
  "$bin/btlm-miner" --metagraph.file "$out/metagraph.toml" --wallet.path "$wallet" \
    --axon.ip 127.0.0.1 --axon.port "$port" --axon.max_request_timeout 3600 \
    --miner.blacklist.min_request_period 0 \
    --btlm.model_dir "$(model_dir "$layers")" $(format_flags "$format") \
    --btlm.max_length "$tokens" --btlm.ignore_eos --btlm.stop "" \
    --btlm.max_batch "$MAX_BATCH" --miner.answer_margin_ms "$ANSWER_MARGIN_MS" \
    $EXTRA_MINER_ARGS >"$log" 2>&1 &
  pid=$!
  local started=$SECONDS
  wait_serving "$pid" "$log"
  echo "   loaded in $(( SECONDS - started )) s"
}
# stop_miner: records the miner's peak RSS (MiB) in $rss and stops it.
stop_miner() {
  rss="$(status_mb "$pid" VmHWM)"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
# metric NAME: the sample NAME of the running miner's /metrics, "nan" if unreadable.
metric() { metrics "$port" "$1"; }
load() { "$bin/loadgen" --target "127.0.0.1:$port" --axon-hotkey "$miner_hotkey" \
  --message-bytes "$MESSAGE_BYTES" --shared-context-bytes "$SHARED_CONTEXT_BYTES" \
  --conversation-turns "$CONVERSATION_TURNS" \
  --duration "${DURATION:-100000}" "$@"; }

summary="$out/summary.md"
{
  echo "btlm_e2e: $LAYERS layers, $TOKENS-token answers,${CONC_STAKES:+ validator stakes $CONC_STAKES,} message $MESSAGE_BYTES bytes, shared context $SHARED_CONTEXT_BYTES bytes, conversation turns $CONVERSATION_TURNS, think $THINK s, max_batch $MAX_BATCH, answer margin $ANSWER_MARGIN_MS ms, $(nproc) cores, $(date -u +%FT%TZ)"
  echo
  echo "| format | validators | answers / requests | cut short | p50 s | p99 s | aggregate tok/s | x 1 validator | all within ${TIMEOUT} s | peak RSS MiB |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$summary"

declare -A capacity
prefix_lines=()
for format in $FORMATS; do
  echo "== $format, $LAYERS layers"
  start_miner "$format" "$LAYERS" "$TOKENS" "$out/miner-$format.log"
  # Warm-up: one request from each validator of the largest run, all at once (the batch's
  # caches made once; every validator has a history, so its requests rank by its stake
  # rather than as first requests at --miner.priority.default).
  warm="$(echo "$CONC" | tr ' ' '\n' | sort -n | tail -1)"
  load --key-offset "$clients_from" --hotkeys "$warm" --concurrency "$warm" --requests "$warm" \
    --timeout 3600 --label "$format warm-up" >/dev/null
  single=""
  rows=()
  for n in $CONC; do
    json="$out/$format-c$n.json"
    cut_before="$(metric prompting_pipeline_truncated_answers_total)"
    tokens_before="$(metric prompting_btlm_generated_tokens_total)"
    load --key-offset "$clients_from" --hotkeys "$n" --concurrency "$n" --requests $(( n * ROUNDS )) \
      --think "$THINK" --timeout "$conc_timeout" --label "$format, $n validators" --json "$json"
    within="$(python3 - "$json" "$TIMEOUT" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
p = d.get("latency_ok") or {}
ok = d["statuses"].get("200", 0)
# Every request answered within the timeout (refused or timed-out ones count against it).
every = "yes" if ok == d["requests"] and p.get("p99_ms", float("inf")) <= float(sys.argv[2]) * 1e3 else "no"
print(f'{d["throughput_rps"]} {p.get("p50_ms", float("nan"))/1e3:.2f} {p.get("p99_ms", float("nan"))/1e3:.2f} {ok}/{d["requests"]} {every}')
EOF
)"
    read -r rps p50 p99 ok every <<<"$within"
    cut="$(python3 -c "print(int(float('$(metric prompting_pipeline_truncated_answers_total)') - float('$cut_before')))" 2>/dev/null || echo nan)"
    # A request cut short ends in the engine at its next step: let it count its tokens.
    sleep 1
    tokens_after="$(metric prompting_btlm_generated_tokens_total)"
    tps="$(python3 - "$json" "$tokens_before" "$tokens_after" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f'{(float(sys.argv[3]) - float(sys.argv[2])) / d["elapsed_s"]:.2f}')
EOF
)"
    single="${single:-$tps}"
    ratio="$(python3 -c "print(f'{$tps / max($single, 1e-9):.2f}')")"
    capacity[$format]="$rps"
    rows+=("| $format | $n | $ok | $cut | $p50 | $p99 | $tps | $ratio | $every |")
  done
  kept="$(metric prompting_btlm_prefix_reused_tokens_total)"
  ran="$(metric 'prompting_btlm_rows_total{kind="prompt"}')"
  spares="$(metric prompting_btlm_kv_spare_caches_made_total) made, $(metric prompting_btlm_kv_spare_caches_used_total) used"
  stop_miner
  for row in "${rows[@]}"; do echo "$row $rss |" >>"$summary"; done
  echo "   $format: prompt tokens run $ran, kept from idle caches (prefix reuse) $kept; blank caches $spares; warm-up included"
  prefix_lines+=("$format: prompt tokens run $ran, kept from idle caches (prefix reuse) $kept; blank caches written while idle: $spares (warm-up included)")
done

if [ "${#prefix_lines[@]}" -gt 0 ]; then
  { echo; printf '%s\n' "${prefix_lines[@]}"; } >>"$summary"
fi

if [ -n "$FLOOD_FORMAT" ]; then
  echo "== flood: $FLOOD_FORMAT, $FLOOD_LAYERS layers, $FLOOD_TOKENS-token answers"
  start_miner "$FLOOD_FORMAT" "$FLOOD_LAYERS" "$FLOOD_TOKENS" "$out/miner-flood.log"
  # The miner's capacity in answers/s at full batch (measured here).
  load --key-offset "$clients_from" --hotkeys "$MAX_BATCH" --concurrency "$MAX_BATCH" \
    --requests $(( MAX_BATCH * 2 )) --timeout 3600 --label "flood capacity" \
    --json "$out/flood-capacity.json" >/dev/null
  # The validators' first requests, so that their requests under the flood rank by their
  # stake (a hotkey's first request gets --miner.priority.default, as in the Python miner).
  load --key-offset 1 --hotkeys "$FLOOD_VALIDATORS" --concurrency "$FLOOD_VALIDATORS" \
    --requests "$FLOOD_VALIDATORS" --timeout 3600 --label "validator warm-up" >/dev/null
  cap="$(field "$out/flood-capacity.json" throughput_rps)"
  rate="$(python3 -c "print(max(0.05, $FLOOD_X * $cap))")"
  echo "   capacity $cap answers/s; flood at $rate req/s from 16 low-stake keys"
  DURATION="$FLOOD_SECONDS" load --key-offset "$clients_from" --hotkeys 16 --rate "$rate" \
    --timeout "$TIMEOUT" --label "flood (stake 1)" --json "$out/flood-low.json" &
  flood=$!
  DURATION="$FLOOD_SECONDS" load --key-offset 1 --hotkeys "$FLOOD_VALIDATORS" \
    --concurrency "$FLOOD_VALIDATORS" --timeout "$TIMEOUT" \
    --label "$FLOOD_VALIDATORS validator(s) (stake 10000)" --json "$out/flood-validator.json"
  wait "$flood"
  # What the miner itself counted (its /metrics): the queue's preemptions and the BTLM
  # engine's deadline guard (requests held back, sequences preempted, prompts ended late).
  counters="$(python3 - "$port" <<'EOF'
import sys, urllib.request
names = ("prompting_queue_preemptions_total",
         "prompting_btlm_deadline_guard_held_back_total",
         "prompting_btlm_deadline_guard_preempted_total",
         "prompting_btlm_deadline_guard_late_total")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10) as r:
        text = r.read().decode()
except OSError as e:
    print(f"(metrics unavailable: {e})")
    sys.exit(0)
values = dict(l.split()[:2] for l in text.splitlines() if l and not l.startswith("#"))
print(", ".join(f"{n.removeprefix('prompting_').removesuffix('_total')} {values.get(n, 'absent')}" for n in names))
EOF
)"
  stop_miner
  {
    echo
    echo "flood ($FLOOD_FORMAT, $FLOOD_LAYERS layers, $FLOOD_TOKENS tokens, ${FLOOD_SECONDS} s): capacity $cap answers/s, low-stake flood at $rate req/s, $FLOOD_VALIDATORS high-stake validator(s) asking one at a time each"
    echo
    echo "| caller | requests | success within ${TIMEOUT} s | answers/s | p50 s | p99 s | statuses |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
    for who in validator low; do
      python3 - "$out/flood-$who.json" "$who" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
p = d.get("latency_ok") or {}
s = lambda k: f'{p[k]/1e3:.2f}' if k in p else "-"
print(f'| {sys.argv[2]} | {d["requests"]} | {d["success_rate"]*100:.1f}% | {d["throughput_rps"]:.2f} | {s("p50_ms")} | {s("p99_ms")} | {d["statuses"]} |')
EOF
    done
    echo
    echo "miner counters: $counters"
  } >>"$summary"
fi
echo
cat "$summary"
