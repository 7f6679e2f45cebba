#!/usr/bin/env bash
# The issue's table on a machine with cores to spare (16 here):
# `bash bench/pinned.sh [OUT [STEP ...]]` (every step unless some are named).
#
# Every daphne process on a core of its own, the simulator on the next, the load generators
# (4 processes) on the rest (capacity.py --pin), direct first so that each relay row has its
# baseline from the same run:
#   1. capacity through nothing (direct) at 50, 250, 500 and 1,000 streams;
#   2. capacity through one daphne process (/v1) at the same levels;
#   3. 1,000 streams through 2 and through 4 daphne processes behind one address;
#   4. profile_relay.py: CPU per request and per relayed chunk, py-spy at 500 streams, RSS with
#      500 and 1,000 idle streams;
#   5. relay_latency.py: added TTFT and ITL at one stream (/v1, the chat, /v1/responses).
# LEVELS (50 250 500 1000) sets the levels of steps 1 and 2.
# Streams are 160 tokens at 20 tokens/s started over 3 s (5 s of steady window at each level).
# A step that fails is reported and the next still runs. The console log and every result
# (bench/results/*.json, the flame graph) are written to OUT (default bench/results/pinned) as
# pinned.log and results.tar.gz. Takes about 6 minutes on 16 cores (9 at most). Uses $PYTHON,
# else .venv/bin/python, else python3.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-bench/results/pinned}
mkdir -p "$OUT_DIR" bench/results
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LOG="$OUT_DIR/pinned.log"
SWEEP=(--pin --loadgen-procs 4 --tokens 160 --ramp-s 3 --refine 0 --quiet-budget-s 0)

STEPS=" ${*:2} "
[ "$STEPS" = "  " ] && STEPS=" direct v1-1proc v1-2proc v1-4proc profile latency "
LEVELS=${LEVELS:-50 250 500 1000}

step() {
    local name=$1 limit=$2
    shift 2
    [[ "$STEPS" == *" $name "* ]] || return 0
    echo "=== $name: $* ($(date +%T))"
    timeout -s INT -k 15 "$limit" "$PY" "$@" || echo "=== $name FAILED (exit $?)"
}

{
    echo "cores: $(nproc); python: $("$PY" --version 2>&1); $(uname -r)"
    # shellcheck disable=SC2086  # LEVELS: one argument per level
    step direct 100 bench/capacity.py --target direct --levels $LEVELS "${SWEEP[@]}" \
        --result pinned_direct
    # shellcheck disable=SC2086
    step v1-1proc 130 bench/capacity.py --target v1 --levels $LEVELS "${SWEEP[@]}" \
        --result pinned_v1_p1
    step v1-2proc 55 bench/capacity.py --target v1 --processes 2 --levels 1000 "${SWEEP[@]}" \
        --result pinned_v1_p2
    step v1-4proc 55 bench/capacity.py --target v1 --processes 4 --levels 1000 "${SWEEP[@]}" \
        --result pinned_v1_p4
    step profile 110 bench/profile_relay.py --pin --streams 500 --tokens 300 --ramp-s 3 \
        --seconds 6 --idle-streams 500 1000
    step latency 90 bench/relay_latency.py --no-litellm --requests 30
} 2>&1 | tee "$LOG"
tar -czf "$OUT_DIR/results.tar.gz" -C bench/results \
    $(cd bench/results && ls pinned_*.json profile.json profile_steady.svg relay_latency.json \
        2>/dev/null)
echo "wrote $LOG and $OUT_DIR/results.tar.gz"
