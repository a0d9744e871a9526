# What the BTLM miner's benchmark scripts share (btlm_e2e.sh, btlm_soak.sh,
# btlm_refusal_cost.sh). Sourced, not run; the caller sets `root` (the repository) first.

# Sets BENCH_MODELS, where the random checkpoints are written once and reused: as given, else
# /work/bench-models when writable, else target/bench-models.
bench_models_dir() {
  if [ -z "${BENCH_MODELS:-}" ]; then
    if [ -d /work/bench-models ] && [ -w /work/bench-models ]; then
      BENCH_MODELS=/work/bench-models
    else
      BENCH_MODELS="$root/target/bench-models"
    fi
  fi
  mkdir -p "$BENCH_MODELS"
}

# Sets bin, the folder of the release binaries: $PREBUILT (btlm-miner, dendrite, loadgen,
# bench-identities and examples/write_random_model built already), else builds them.
bench_binaries() {
  if [ -n "${PREBUILT:-}" ]; then
    echo "== prebuilt binaries in $PREBUILT (not built here)"
    bin="$PREBUILT"
  else
    echo "== build (RUSTFLAGS=${RUSTFLAGS:-none})"
    cargo build --release --quiet -p prompting-btlm-backend --example write_random_model
    cargo build --release --quiet -p btlm-miner
    cargo build --release --quiet -p prompting-dendrite
    cargo build --release --quiet -p prompting-benches --bin loadgen --bin bench-identities
    bin="${CARGO_TARGET_DIR:-$root/target}/release"
  fi
}

# random_model_and_validators LAYERS VALIDATORS: sets model (the random checkpoint of LAYERS
# layers, written once in $BENCH_MODELS), wallet ($out/wallet) and miner_hotkey, with keys
# 1..=VALIDATORS registered as validators of stake 10 000 in $out/metagraph.toml.
random_model_and_validators() {
  model="$BENCH_MODELS/btlm-random-${1}l"
  "$bin/examples/write_random_model" --layers "$1" --out "$model"
  wallet="$out/wallet"
  miner_hotkey="$("$bin/bench-identities" --wallet-path "$wallet" --metagraph "$out/metagraph.toml" \
    --clients "$2" --validators "$2" --validator-stake 10000 --client-stake 1)"
}

# format_flags FORMAT: btlm-miner's flags for a weight format.
format_flags() {
  case "$1" in
    f32 | bf16 | f16) echo "--btlm.dtype $1" ;;
    q8_0 | q4k) echo "--btlm.quantize $1" ;;
    *) echo "unknown format $1" >&2; exit 2 ;;
  esac
}

# free_port: a free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_serving PID LOG: waits until the btlm-miner of PID logs "serving on" (its model
# loaded); exits the script if it dies first or takes more than 30 minutes.
wait_serving() {
  local pid="$1" log="$2" started=$SECONDS
  until grep -q "serving on" "$log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "btlm-miner exited:" >&2; tail -5 "$log" >&2; exit 1; fi
    if (( SECONDS - started > 1800 )); then echo "btlm-miner did not start in 30 min" >&2; exit 1; fi
    sleep 1
  done
}

# status_mb PID FIELD: a process's /proc status memory field (VmRSS, VmHWM: peak) in MiB,
# "nan" once it is gone.
status_mb() {
  awk -v field="$2:" '$1 == field {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo nan
}

# metrics PORT NAME...: the named samples of the miner's /metrics (labels included, e.g.
# 'prompting_btlm_requests_total{outcome="failed"}'), space-separated, "nan" where missing.
metrics() {
  python3 - "$@" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10) as r:
        text = r.read().decode()
except OSError:
    text = ""
values = dict(l.split()[:2] for l in text.splitlines() if l and not l.startswith("#"))
print(" ".join(values.get(n, "nan") for n in sys.argv[2:]))
EOF
}
