#!/usr/bin/env bash
# Run every benchmark at full size; each writes bench/results/<name>.json (stdout, the record)
# and bench/results/<name>.log (stderr: progress and the human table). Needs PostgreSQL on
# 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (db 9 is flushed). Run it on an idle machine.
#
#   bench/run_all.sh                 # everything, full size
#   N=2000 LATENCY_SECONDS=10 LATENCY_BURST=200 bench/run_all.sh   # a quick, smaller look
#   INFERQ_PRECISION=fp32 OUT=bench/results/fp32 bench/run_all.sh     # the float model
set -uo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset INFERQ_TORCH_THREADS

N="${N:-10000}"
ROUNDS="${ROUNDS:-3}"
LATENCY_SECONDS="${LATENCY_SECONDS:-30}"
LATENCY_BURST="${LATENCY_BURST:-500}"
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"

failed=()
run() {
    local name=$1
    shift
    echo "== $name: python -m bench.$name $*" >&2
    if python -m "bench.$name" "$@" >"$OUT/$name.json.tmp" 2> >(tee "$OUT/$name.log" >&2); then
        mv "$OUT/$name.json.tmp" "$OUT/$name.json"
    else
        echo "!! $name exited with status $?; its output is in $OUT/$name.json.failed" >&2
        mv "$OUT/$name.json.tmp" "$OUT/$name.json.failed"
        failed+=("$name")
    fi
}

run batching_gain --n "$N" --repeats 2
run pipeline_efficiency --n "$N" --rounds "$ROUNDS"
run cache --n "$N" --rounds "$ROUNDS"
run latency --n "$LATENCY_BURST" --seconds "$LATENCY_SECONDS"
run precision --n "$((N < 2000 ? N : 2000))"

if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all benchmarks written to $OUT/" >&2
