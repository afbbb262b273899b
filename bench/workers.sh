#!/usr/bin/env bash
# Throughput and CPU per request of server.workers: 2 against 1 on this
# 2-core machine, same run, interleaved.  See bench/README.md, "Comparisons".
#
#   bash bench/workers.sh [--quick] [--reps N] [--seconds S] [--methods LIST] [--keep] [--out DIR]
#
# Sessions are off in both configurations (bench/configs/workers-1.yaml and
# workers-2.yaml), so no Redis is needed; metrics on, no middleware.
#
# Two workers on two cores cannot be kept apart from the load generator, so
# two placements are measured, alternately (affinity and nice values are
# changed on the running processes before each wrk run):
#   pinned  wrk -t1 and nginx on CPU 1 at nice 0; 1 worker pinned to CPU 0
#           (bench/run.sh's placement) against 2 workers on both CPUs, one of
#           them sharing CPU 1 with the load (pessimistic for 2 workers)
#   nice    wrk -t1 and nginx on both CPUs at nice 19; the gateway on both
#           CPUs at nice 0, 1 worker or 2 (the load takes what the gateway
#           leaves; a 1-worker gateway can only use one core anyway)
#
#   --methods LIST  pinned,nice (default both)
#   --reps N        repetitions (default 4); --seconds S: each wrk run (default 10; --quick 4)
#
# Environment: BENCH_WORKERS_PORT (18290: nginx; gateways on the next two
# ports), VENV.  Only 127.0.0.1.  A full run takes about 3 minutes.
set -euo pipefail
# Numbers are parsed from `times`, awk and /proc: one decimal point, whatever the locale.
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BENCH_NAME=workers
# shellcheck source=multi_lib.sh
. "$HERE/multi_lib.sh"

METHODS="pinned,nice"
REPS=4
SECONDS_EACH=10
WARM_SECONDS=2
KEEP=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) SECONDS_EACH=4; WARM_SECONDS=1 ;;
        --reps) REPS="$2"; shift ;;
        --seconds) SECONDS_EACH="$2"; shift ;;
        --methods) METHODS="$2"; shift ;;
        --keep) KEEP=1 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,24p' "$HERE/workers.sh" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "workers.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$REPS" -ge 1 ] 2>/dev/null || { echo "workers.sh: --reps must be a number" >&2; exit 2; }
if [ -n "$OUT" ]; then mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"; fi
cd "$ROOT"
IFS=, read -r -a METHOD_LIST <<<"$METHODS"
for m in "${METHOD_LIST[@]}"; do
    case "$m" in pinned|nice) ;; *) die "unknown method '$m' (pinned, nice)" ;; esac
done

BASE_PORT="${BENCH_WORKERS_PORT:-18290}"
CONNS=50
ALL_CPUS="0-$(($(nproc) - 1))"

need_tools
[ "$(nproc)" -eq 2 ] || log "note: this machine has $(nproc) CPUs; the methods assume 2"
[ "$(id -u)" = 0 ] || die "needs root to put nginx back to nice 0 between methods"
for i in 0 1 2; do
    port_free $((BASE_PORT + i)) || die "port $((BASE_PORT + i)) on 127.0.0.1 is taken (set BENCH_WORKERS_PORT)"
done

mk_work
start_upstream "$BASE_PORT" ""
log "nginx on 127.0.0.1:$BASE_PORT (pid $NGINX_PID)"
start_gateway w1 "$HERE/configs/workers-1.yaml" $((BASE_PORT + 1)) ""
start_gateway w2 "$HERE/configs/workers-2.yaml" $((BASE_PORT + 2)) ""
# The supervisor says it is ready when every worker listens; /health may
# answer from the first one before: wait for both worker processes.
for _ in $(seq 1 50); do
    [ "$(children_of "${GW_PID[w2]}" | wc -l)" -ge 2 ] && break
    sleep 0.2
done
GW_CHILDREN[w2]="$(children_of "${GW_PID[w2]}" | tr '\n' ' ')"
[ "$(echo "${GW_CHILDREN[w2]}" | wc -w)" = 2 ] || die "w2 has workers '${GW_CHILDREN[w2]}', expected 2"
sleep 2
sanity w1
for _ in 1 2 3 4 5 6; do sanity w2; done
log "gateways: w1 pid ${GW_PID[w1]}; w2 supervisor ${GW_PID[w2]}, workers ${GW_CHILDREN[w2]}"

# place METHOD GATEWAY: affinity and nice of nginx and the gateway under test;
# sets WRK_PREFIX for the load generator.
place() {
    local method="$1" gw="$2" p gw_cpus
    local nginx_pids gw_pids
    nginx_pids="$NGINX_PID $(children_of "$NGINX_PID")"
    gw_pids="${GW_PID[$gw]} $(children_of "${GW_PID[$gw]}")"
    if [ "$method" = pinned ]; then
        for p in $nginx_pids; do taskset -a -p -c 1 "$p" >/dev/null; renice -n 0 -p "$p" >/dev/null; done
        WRK_PREFIX=(taskset -c 1)
        gw_cpus="$ALL_CPUS"
        [ "$gw" = w1 ] && gw_cpus=0
    else
        for p in $nginx_pids; do taskset -a -p -c "$ALL_CPUS" "$p" >/dev/null; renice -n 19 -p "$p" >/dev/null; done
        WRK_PREFIX=(nice -n 19)
        gw_cpus="$ALL_CPUS"
    fi
    for p in $gw_pids; do taskset -a -p -c "$gw_cpus" "$p" >/dev/null; done
}

START=$SECONDS
log "warm-up: ${WARM_SECONDS}s each"
for gw in w1 w2; do
    place "${METHOD_LIST[0]}" "$gw"
    run_wrk "\"case\":\"warmup\",\"method\":\"\",\"target\":\"$gw\",\"rep\":0" "$gw" "$WARM_SECONDS" "$CONNS" \
        "${WRK_PREFIX[@]}"
done
for rep in $(seq 1 "$REPS"); do
    log "repetition $rep of $REPS: ${METHOD_LIST[*]} x w1 w2 (wrk -t1 -c$CONNS -d${SECONDS_EACH}s each)"
    for m in "${METHOD_LIST[@]}"; do
        for gw in w1 w2; do
            place "$m" "$gw"
            run_wrk "\"case\":\"workers\",\"method\":\"$m\",\"target\":\"$gw\",\"rep\":$rep" "$gw" \
                "$SECONDS_EACH" "$CONNS" "${WRK_PREFIX[@]}"
        done
    done
done
log "measured in $((SECONDS - START)) s"
now_kids="$(children_of "${GW_PID[w2]}" | tr '\n' ' ')"
[ "$now_kids" = "${GW_CHILDREN[w2]}" ] || log "w2's workers changed during the run: '${GW_CHILDREN[w2]}' -> '$now_kids'"

for gw in w1 w2; do
    kill -0 "${GW_PID[$gw]}" 2>/dev/null && alive=true || alive=false
    printf '{"kind":"files","target":"%s","traces":-1,"info_lines":-1,"log_lines":%s,"alive":%s}\n' \
        "$gw" "$(grep -vc 'workers listening on\|listening on' "$WORK/gw-$gw/gateway.log" || true)" \
        "$alive" >>"$RESULTS"
done

"$PY" - "$WORK/meta.json" <<EOF
import datetime, json, sys
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "reps": $REPS, "seconds": $SECONDS_EACH, "connections": $CONNS,
    "sessions": "sessions off in both (no Redis), metrics on",
    "methods": {
        "pinned": "wrk + nginx pinned to CPU 1 (nice 0); 1 worker pinned to CPU 0, 2 workers on CPUs $ALL_CPUS",
        "nice": "wrk + nginx on CPUs $ALL_CPUS at nice 19; gateway (1 or 2 workers) on CPUs $ALL_CPUS at nice 0",
    },
}, open(sys.argv[1], "w"))
EOF
echo
"$PY" "$HERE/multi_report.py" workers "$RESULTS" --meta "$WORK/meta.json" | tee "$WORK/table.txt"

for gw in w1 w2; do
    if [ -s "$WORK/gw-$gw/gateway.log" ]; then
        echo "gateway $gw log (last 5 of $(wc -l <"$WORK/gw-$gw/gateway.log") lines):"
        tail -5 "$WORK/gw-$gw/gateway.log" | cut -c1-300 | sed 's/^/  | /'
    fi
done
if grep -q . "$WORK/nginx-error.log" 2>/dev/null; then
    echo "nginx error log (last 5):"; tail -5 "$WORK/nginx-error.log" | sed 's/^/  | /'
fi
if [ -n "$OUT" ]; then
    cp "$WORK/table.txt" "$RESULTS" "$WORK/meta.json" "$OUT/"
    log "results copied to $OUT"
fi
