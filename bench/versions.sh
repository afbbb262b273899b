#!/usr/bin/env bash
# The bare gateway of two code versions side by side, in the same run:
# throughput (wrk -t1 -c50) and added latency at concurrency 1 (wrk -c1,
# against nginx direct), interleaved (before after direct before after ...).
#
#   bash bench/versions.sh [--before REV] [--reps N] [--seconds S] [--keep]
#
#   --before REV  the git revision to compare the working tree with (main)
#   --after REV   a git revision instead of the working tree (--after main
#                 with --before main: an A/A run, to see the noise and any
#                 bias of the order)
#   --reps N      repetitions of the cycle (5)
#   --seconds S   each wrk run (6)
#
# "before" runs from `git archive REV` unpacked in the run's directory, put
# first on PYTHONPATH; "after" is this tree.  Both use bench/configs/bare.yaml,
# pinned to CPU 0; nginx and wrk on CPU 1.  Ports: BENCH_VERSIONS_PORT
# (18380: nginx; gateways on the next two).  Only 127.0.0.1.
set -euo pipefail
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BENCH_NAME=versions
# shellcheck source=multi_lib.sh
. "$HERE/multi_lib.sh"

BEFORE=main
AFTER=""
REPS=5
SECONDS_EACH=6
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --before) BEFORE="$2"; shift ;;
        --after) AFTER="$2"; shift ;;
        --reps) REPS="$2"; shift ;;
        --seconds) SECONDS_EACH="$2"; shift ;;
        --keep) KEEP=1 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
BASE_PORT="${BENCH_VERSIONS_PORT:-18380}"
GW_CPU="${BENCH_GATEWAY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"

need_tools
for i in 0 1 2; do
    port_free $((BASE_PORT + i)) || die "port $((BASE_PORT + i)) on 127.0.0.1 is taken"
done
mk_work
mkdir -p "$WORK/before"
git -C "$ROOT" archive "$BEFORE" | tar -x -C "$WORK/before"
start_upstream "$BASE_PORT" "$LOAD_CPU"
PYTHONPATH="$WORK/before" start_gateway before "$HERE/configs/bare.yaml" $((BASE_PORT + 1)) "$GW_CPU"
grep -qz "PYTHONPATH=$WORK/before" "/proc/${GW_PID[before]}/environ" || die "before runs the wrong code"
if [ -n "$AFTER" ]; then
    mkdir -p "$WORK/after"
    git -C "$ROOT" archive "$AFTER" | tar -x -C "$WORK/after"
    PYTHONPATH="$WORK/after" start_gateway after "$HERE/configs/bare.yaml" $((BASE_PORT + 2)) "$GW_CPU"
else
    start_gateway after "$HERE/configs/bare.yaml" $((BASE_PORT + 2)) "$GW_CPU"
fi
sanity before
sanity after
# nginx direct, for the latency the gateway adds.
GW_PID[direct]="$NGINX_PID"
GW_PORT[direct]="$BASE_PORT"
log "before = $BEFORE ($(git -C "$ROOT" rev-parse --short "$BEFORE")), after = ${AFTER:-working tree}"

for name in before after; do
    run_wrk "\"case\":\"warmup\",\"target\":\"$name\",\"rep\":0" "$name" 2 50 taskset -c "$LOAD_CPU"
done
for rep in $(seq 1 "$REPS"); do
    log "repetition $rep of $REPS"
    # The order alternates, so neither version always runs first.
    order="before after"
    [ $((rep % 2)) = 0 ] && order="after before"
    for name in $order; do
        run_wrk "\"case\":\"throughput\",\"target\":\"$name\",\"rep\":$rep" "$name" "$SECONDS_EACH" 50 \
            taskset -c "$LOAD_CPU"
    done
    for name in $order direct; do
        run_wrk "\"case\":\"latency\",\"target\":\"$name\",\"rep\":$rep" "$name" "$SECONDS_EACH" 1 \
            taskset -c "$LOAD_CPU"
    done
done

"$PY" - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def med(case, target, field):
    values = [r[field] for r in rows if r.get("case") == case and r.get("target") == target
              and field in r]
    return statistics.median(values) if values else float("nan")
# CPU per call: the gateway's own CPU time over the calls it answered, which
# other processes on a shared machine disturb far less than throughput.
cpu = {}
for r in rows:
    if r.get("kind") == "cpu" and r.get("case") == "throughput":
        cpu[(r["target"], r["rep"])] = r["gw_ticks"] / r["clk_tck"]
for r in rows:
    key = (r.get("target"), r.get("rep"))
    if r.get("case") == "throughput" and "requests" in r and key in cpu:
        r["cpu_us"] = cpu[key] / r["requests"] * 1e6
cb, ca = med("throughput", "before", "cpu_us"), med("throughput", "after", "cpu_us")
print(f"CPU per call (c50, median): before {cb:.1f} us, after {ca:.1f} us, after/before {ca / cb:.3f}")
before, after = med("throughput", "before", "rps"), med("throughput", "after", "rps")
print(f"throughput (c50, median req/s): before {before:.0f}, after {after:.0f}, "
      f"after/before {after / before:.3f}")
direct = med("latency", "direct", "lat_p50_us")
for target in ("before", "after"):
    p50, p99 = med("latency", target, "lat_p50_us"), med("latency", target, "lat_p99_us")
    print(f"latency c1 {target}: p50 {p50:.0f} us (added {p50 - direct:.0f}), p99 {p99:.0f} us")
added_before = med("latency", "before", "lat_p50_us") - direct
added_after = med("latency", "after", "lat_p50_us") - direct
print(f"added p50 latency after/before {added_after / added_before:.3f} (direct p50 {direct:.0f} us)")
EOF
[ "$KEEP" = 1 ] && log "kept $WORK"
exit 0
