#!/usr/bin/env bash
# Throughput and CPU per request of several gateway configurations, measured
# in the same run, interleaved (A B C A B C ...).  See bench/README.md,
# "Comparisons".
#
#   bash bench/compare.sh [--quick] [--reps N] [--seconds S] [--configs LIST] [--keep] [--out DIR]
#
#   --configs LIST  comma-separated names (default: all, in this order):
#                   bare, default, metrics-off, trace+printer,
#                   trace+printer-info, trace, printer-info
#                   (files: bench/configs/NAME.yaml, '+' read as '-')
#   --reps N        repetitions of the whole cycle (default 3)
#   --seconds S     each wrk run (default 8; --quick: 4)
#   --keep          keep the temporary directory (logs, traces, results.jsonl)
#   --out DIR       copy the table and results.jsonl into DIR
#
# Every gateway runs for the whole run on its own port, pinned to CPU 0 (only
# the one under load is busy); nginx and wrk -t1 -c50 run on CPU 1.  Around
# every wrk run the gateway's utime+stime is read from /proc/PID/stat: CPU per
# request is that delta / requests.  Environment: BENCH_COMPARE_PORT (18280:
# nginx; gateways on the next ports), BENCH_GATEWAY_CPU (0), BENCH_LOAD_CPU (1),
# BENCH_FOLLOW (configs whose live view bench/follower.py follows), VENV.  Only 127.0.0.1.  A full run (7 configs x 3 x 8 s) takes 3.5-5 minutes.
set -euo pipefail
# Numbers are parsed from `times`, awk and /proc: one decimal point, whatever the locale.
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BENCH_NAME=compare
# shellcheck source=multi_lib.sh
. "$HERE/multi_lib.sh"

ALL_CONFIGS="bare,default,metrics-off,trace+printer,trace+printer-info,trace,printer-info"
CONFIGS="$ALL_CONFIGS"
REPS=3
SECONDS_EACH=8
WARM_SECONDS=2
KEEP=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) SECONDS_EACH=4; WARM_SECONDS=1 ;;
        --reps) REPS="$2"; shift ;;
        --seconds) SECONDS_EACH="$2"; shift ;;
        --configs) CONFIGS="$2"; shift ;;
        --keep) KEEP=1 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$HERE/compare.sh" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$REPS" -ge 1 ] 2>/dev/null || { echo "compare.sh: --reps must be a number" >&2; exit 2; }
if [ -n "$OUT" ]; then mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"; fi
cd "$ROOT"

BASE_PORT="${BENCH_COMPARE_PORT:-18280}"
GW_CPU="${BENCH_GATEWAY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
CONNS=50

IFS=, read -r -a NAMES <<<"$CONFIGS"
for name in "${NAMES[@]}"; do
    [ -r "$HERE/configs/${name//+/-}.yaml" ] || die "no config bench/configs/${name//+/-}.yaml for '$name'"
done

need_tools
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (gateway on one, load on the other)"
for i in $(seq 0 "${#NAMES[@]}"); do
    port_free $((BASE_PORT + i)) || die "port $((BASE_PORT + i)) on 127.0.0.1 is taken (set BENCH_COMPARE_PORT)"
done

mk_work
start_upstream "$BASE_PORT" "$LOAD_CPU"
log "nginx on 127.0.0.1:$BASE_PORT (pid $NGINX_PID, CPU $LOAD_CPU)"
i=1
for name in "${NAMES[@]}"; do
    start_gateway "$name" "$HERE/configs/${name//+/-}.yaml" $((BASE_PORT + i)) "$GW_CPU"
    sanity "$name"
    log "gateway $name on 127.0.0.1:$((BASE_PORT + i)) (pid ${GW_PID[$name]}, CPU $GW_CPU)"
    i=$((i + 1))
done

# BENCH_FOLLOW: gateways whose live view a browser-like client follows for
# the whole run (bench/follower.py, on the load CPU, as a browser would be).
FOLLOWERS=()
IFS=, read -r -a FOLLOW <<<"${BENCH_FOLLOW:-}"
for name in "${FOLLOW[@]}"; do
    taskset -c "$LOAD_CPU" "$PY" "$HERE/follower.py" --url "http://127.0.0.1:${GW_PORT[$name]}" \
        --report "$WORK/follow-$name.json" &
    FOLLOWERS+=("$!")
    log "following gateway $name's /api/events (pid $!)"
done

START=$SECONDS
log "warm-up: ${WARM_SECONDS}s each"
for name in "${NAMES[@]}"; do
    run_wrk "\"case\":\"warmup\",\"target\":\"$name\",\"rep\":0" "$name" "$WARM_SECONDS" "$CONNS" \
        taskset -c "$LOAD_CPU"
done
for rep in $(seq 1 "$REPS"); do
    log "repetition $rep of $REPS: ${NAMES[*]} (wrk -t1 -c$CONNS -d${SECONDS_EACH}s each)"
    for name in "${NAMES[@]}"; do
        run_wrk "\"case\":\"compare\",\"target\":\"$name\",\"rep\":$rep" "$name" "$SECONDS_EACH" "$CONNS" \
            taskset -c "$LOAD_CPU"
    done
done
log "measured in $((SECONDS - START)) s"
for pid in "${FOLLOWERS[@]}"; do stop_pid "$pid" TERM 5; done
for name in "${FOLLOW[@]}"; do
    [ -s "$WORK/follow-$name.json" ] && log "follower of $name: $(cat "$WORK/follow-$name.json")"
done

# What the middlewares left behind: trace files and printer lines, against
# the 2xx answers the gateway gave (wrk's requests minus non-2xx, + sanity).
for name in "${NAMES[@]}"; do
    dir="$WORK/gw-$name"
    traces=-1; lines=-1
    [ -d "$dir/traces" ] && traces="$(find "$dir/traces" -name '*.json' | wc -l)"
    [ -f "$dir/gateway-info.log" ] && lines="$(wc -l <"$dir/gateway-info.log")"
    kill -0 "${GW_PID[$name]}" 2>/dev/null && alive=true || alive=false
    # The printer logs a call that ended in an error at warn: wrk closing its
    # connections with calls in flight at the end of each run gives "error=
    # client disconnected" lines, expected; anything else is a problem.
    cut="$(cat "$dir/gateway.log" "$dir/gateway-info.log" 2>/dev/null | grep -c 'error=client disconnected' || true)"
    other="$(grep -vc 'error=client disconnected' "$dir/gateway.log" || true)"
    printf '{"kind":"files","target":"%s","traces":%s,"info_lines":%s,"log_lines":%s,"cut_lines":%s,"alive":%s}\n' \
        "$name" "$traces" "$lines" "$other" "$cut" "$alive" >>"$RESULTS"
done

"$PY" - "$WORK/meta.json" <<EOF
import datetime, json, sys
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "reps": $REPS, "seconds": $SECONDS_EACH, "connections": $CONNS,
    "gateway_cpu": "$GW_CPU", "load_cpu": "$LOAD_CPU", "configs": "$CONFIGS",
}, open(sys.argv[1], "w"))
EOF
echo
"$PY" "$HERE/multi_report.py" compare "$RESULTS" --meta "$WORK/meta.json" | tee "$WORK/table.txt"

for name in "${NAMES[@]}"; do
    if [ -s "$WORK/gw-$name/gateway.log" ]; then
        echo "gateway $name log (last 5 of $(wc -l <"$WORK/gw-$name/gateway.log") lines):"
        tail -5 "$WORK/gw-$name/gateway.log" | cut -c1-300 | sed 's/^/  | /'
    fi
done
if grep -q . "$WORK/nginx-error.log" 2>/dev/null; then
    echo "nginx error log (last 5):"; tail -5 "$WORK/nginx-error.log" | sed 's/^/  | /'
fi
if [ -n "$OUT" ]; then
    cp "$WORK/table.txt" "$RESULTS" "$WORK/meta.json" "$OUT/"
    log "results copied to $OUT"
fi
