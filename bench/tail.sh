#!/usr/bin/env bash
# The default configuration's cost and tail latency against the bare relay,
# measured in one run, interleaved (A B C A B C ...).  See bench/README.md,
# "Tail latency of the default configuration".
#
#   bash bench/tail.sh [--reps N] [--seconds S] [--configs LIST] [--keep] [--out DIR]
#
#   --configs LIST  comma-separated names (default: bare,trace+sessions,everything)
#                   (files: bench/configs/NAME.yaml, '+' read as '-')
#   --reps N        repetitions of the whole cycle (default 3)
#   --seconds S     each wrk run (default 6)
#   --old DIR       also run every config on the code checked out in DIR (its
#                   own .venv, made by its `make setup`), as "old:NAME": the
#                   before-and-after table of one run
#
# Each repetition runs, for every config in turn, wrk -t1 -c64 (throughput)
# and wrk -t1 -c1 (one call at a time on one keep-alive connection: the
# latency percentiles, from wrk's full histogram).  Gateways on CPU 0, nginx
# and wrk on CPU 1.  Environment: BENCH_TAIL_PORT (18480: nginx; gateways on
# the next ports), BENCH_GATEWAY_CPU (0), BENCH_LOAD_CPU (1), VENV.
set -euo pipefail
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BENCH_NAME=tail
# shellcheck source=multi_lib.sh
. "$HERE/multi_lib.sh"

CONFIGS="bare,trace+sessions,everything"
REPS=3
SECONDS_EACH=6
KEEP=0
OUT=""
OLD=""
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS="$2"; shift ;;
        --seconds) SECONDS_EACH="$2"; shift ;;
        --configs) CONFIGS="$2"; shift ;;
        --keep) KEEP=1 ;;
        --old) OLD="$(cd "$2" && pwd)"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$HERE/tail.sh" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "tail.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$OUT" ]; then mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"; fi
cd "$ROOT"

BASE_PORT="${BENCH_TAIL_PORT:-18480}"
GW_CPU="${BENCH_GATEWAY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"

IFS=, read -r -a NAMES <<<"$CONFIGS"
for name in "${NAMES[@]}"; do
    [ -r "$HERE/configs/${name//+/-}.yaml" ] || die "no config bench/configs/${name//+/-}.yaml for '$name'"
done
if [ -n "$OLD" ]; then
    [ -x "$OLD/.venv/bin/twistd" ] || die "$OLD/.venv/bin/twistd not found: run make setup in $OLD"
    for name in "${NAMES[@]}"; do NAMES+=("old:$name"); done
    CONFIGS="$(IFS=,; echo "${NAMES[*]}")"
fi
need_tools
for i in $(seq 0 "${#NAMES[@]}"); do
    port_free $((BASE_PORT + i)) || die "port $((BASE_PORT + i)) on 127.0.0.1 is taken (set BENCH_TAIL_PORT)"
done

mk_work
start_upstream "$BASE_PORT" "$LOAD_CPU"
i=1
NEW_TWISTD="$TWISTD"
for name in "${NAMES[@]}"; do
    TWISTD="$NEW_TWISTD"
    [ "${name#old:}" != "$name" ] && TWISTD="$OLD/.venv/bin/twistd"
    config="${name#old:}"
    start_gateway "$name" "$HERE/configs/${config//+/-}.yaml" $((BASE_PORT + i)) "$GW_CPU"
    sanity "$name"
    log "gateway $name on 127.0.0.1:$((BASE_PORT + i)) (pid ${GW_PID[$name]})"
    i=$((i + 1))
done
for name in "${NAMES[@]}"; do
    run_wrk "\"case\":\"warmup\",\"target\":\"$name\",\"rep\":0" "$name" 2 64 taskset -c "$LOAD_CPU"
done
for rep in $(seq 1 "$REPS"); do
    log "repetition $rep of $REPS"
    for name in "${NAMES[@]}"; do
        run_wrk "\"case\":\"c64\",\"target\":\"$name\",\"rep\":$rep" "$name" "$SECONDS_EACH" 64 \
            taskset -c "$LOAD_CPU"
        run_wrk "\"case\":\"c1\",\"target\":\"$name\",\"rep\":$rep" "$name" "$SECONDS_EACH" 1 \
            taskset -c "$LOAD_CPU"
    done
done
for name in "${NAMES[@]}"; do
    dir="$WORK/gw-$name"; traces=-1
    [ -d "$dir/traces" ] && traces="$(find "$dir/traces" -name '*.json' | wc -l)"
    printf '{"kind":"files","target":"%s","traces":%s}\n' "$name" "$traces" >>"$RESULTS"
    if true; then
        curl -fsS "http://127.0.0.1:${GW_PORT[$name]}/metrics?format=prometheus" >"$dir/metrics.txt" 2>/dev/null || true
    fi
done
"$PY" "$HERE/tail_report.py" "$RESULTS" --configs "$CONFIGS" --work "$WORK" | tee "$WORK/table.txt"
if [ -n "$OUT" ]; then cp "$WORK/table.txt" "$RESULTS" "$OUT/"; log "results copied to $OUT"; fi
