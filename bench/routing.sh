#!/usr/bin/env bash
# What routing costs, and what a failover costs (issue 14): the gateway in
# front of the bench's nginx upstream (bench/gen_upstream.py), started with
# each of the configs below in turn, in the same run.
#
#   bash bench/routing.sh [--reps N] [--seconds S] [--calls N] [--only throughput|latency]
#
#   one       one catch-all route (and the same two upstreams as "ten")
#   ten       ten routes; the call matches only the last: nine are passed
#             over first (path prefixes, model globs, a header), so every
#             call reads the body's model
#   failover  a route [down, up]: "down" is 127.0.0.1 on a port nobody
#             listens on (refused), eject_after 0 so every call pays it
#
# Throughput: wrk -c50 on the small chat completion (bench/post.lua),
# one and ten alternating, medians.  Latency: one connection, N calls in a
# row (bench/rawhttp.py), one and failover alternating; p50 and p99.
# Environment: BENCH_GATEWAY_PORT (18180), BENCH_UPSTREAM_PORT (18181),
# BENCH_REFUSED_PORT (18189), BENCH_GATEWAY_CPU (0), BENCH_LOAD_CPU (1), VENV.
set -euo pipefail
export LC_ALL=C
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
REPS=5; SECONDS_PER=8; CALLS=3000; ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS="$2"; shift ;;
        --seconds) SECONDS_PER="$2"; shift ;;
        --calls) CALLS="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        *) echo "routing.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
GW_PORT="${BENCH_GATEWAY_PORT:-18180}"
UP_PORT="${BENCH_UPSTREAM_PORT:-18181}"
DOWN_PORT="${BENCH_REFUSED_PORT:-18189}"
GW_CPU="${BENCH_GATEWAY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
WORK="$(mktemp -d /tmp/llmgate-routing.XXXXXX)"
chmod 755 "$WORK"
NGINX_PID=""; GW_PID=""
cleanup() {
    [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for port in "$GW_PORT" "$UP_PORT" "$DOWN_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "routing.sh: port $port is taken" >&2; exit 1
    fi
done

wait_http() {  # url seconds
    local end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ]; do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    return 1
}

"$PY" "$HERE/gen_upstream.py" --dir "$WORK" --port "$UP_PORT" --big-mb 1 >/dev/null
taskset -c "$LOAD_CPU" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" \
    >"$WORK/nginx.out" 2>&1 &
NGINX_PID=$!
wait_http "http://127.0.0.1:$UP_PORT/health" 10 || { echo "nginx did not start" >&2; exit 1; }

common="server: {host: 127.0.0.1, port: $GW_PORT}
session: {enabled: false}
metrics: {enabled: false}
logging: {level: warn}"
up="http://127.0.0.1:$UP_PORT"
cat >"$WORK/one.yaml" <<YAML
$common
upstreams:
  up: {base_url: "$up"}
  other: {base_url: "$up"}
routes:
  - {upstream: up}
YAML
cat >"$WORK/ten.yaml" <<YAML
$common
upstreams:
  up: {base_url: "$up"}
  other: {base_url: "$up"}
routes:
  - {path: /v1/messages, upstream: other}
  - {model: "claude-*", upstream: other}
  - {model: "llama-*", upstream: other}
  - {path: /v1/embeddings, upstream: other}
  - {header: {x-tenant: beta}, upstream: other}
  - {model: "gemini-*", upstream: other}
  - {path: /v1/responses, upstream: other}
  - {model: "mistral-*", upstream: other}
  - {model: "*-preview", upstream: other}
  - {upstream: up}
YAML
cat >"$WORK/failover.yaml" <<YAML
$common
upstreams:
  down: {base_url: "http://127.0.0.1:$DOWN_PORT", eject_after: 0}
  up: {base_url: "$up"}
routes:
  - {upstream: [down, up]}
YAML

start_gateway() {
    (cd "$WORK" && exec taskset -c "$GW_CPU" "$VENV/bin/twistd" --nodaemon --pidfile= \
        llmgate --config "$WORK/$1.yaml") >"$WORK/gateway-$1.log" 2>&1 &
    GW_PID=$!
    wait_http "http://127.0.0.1:$GW_PORT/health" 30 || {
        tail -20 "$WORK/gateway-$1.log" >&2; exit 1; }
    # Warm up: pooled connections, the route table's caches.
    taskset -c "$LOAD_CPU" wrk -t1 -c50 -d1s -s "$HERE/post.lua" \
        "http://127.0.0.1:$GW_PORT/v1/chat/completions" >/dev/null
}
cpu_ticks() {  # utime + stime of pid $1, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
stop_gateway() {
    kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=""
}

RESULTS="$WORK/results.txt"
for rep in $(seq 1 "$REPS"); do
    order="one ten"; [ $((rep % 2)) -eq 0 ] && order="ten one"
    [ "$ONLY" = latency ] && order=""
    for cfg in $order; do
        start_gateway "$cfg"
        before=$(cpu_ticks "$GW_PID")
        line=$(BENCH_TAG="" taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${SECONDS_PER}s" \
            -s "$HERE/post.lua" "http://127.0.0.1:$GW_PORT/v1/chat/completions" | grep '"rps"')
        after=$(cpu_ticks "$GW_PID")
        rps=$(echo "$line" | grep -o '"rps":[0-9.]*' | cut -d: -f2)
        requests=$(echo "$line" | grep -o '"requests":[0-9]*' | cut -d: -f2)
        # The gateway's own CPU time per call: what throughput on a core of
        # its own would be, less swayed by other loads than req/s.
        cpu_us=$(awk -v t=$((after - before)) -v n="$requests" -v hz="$(getconf CLK_TCK)" \
            'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
        echo "throughput $cfg $rps $cpu_us" >>"$RESULTS"
        stop_gateway
    done
    order="one failover"; [ $((rep % 2)) -eq 0 ] && order="failover one"
    [ "$ONLY" = throughput ] && order=""
    for cfg in $order; do
        start_gateway "$cfg"
        PYTHONPATH="$HERE" taskset -c "$LOAD_CPU" "$PY" - "$GW_PORT" "$CALLS" "$cfg" >>"$RESULTS" <<'PYTHON'
import sys, time
from rawhttp import Connection, percentile
port, calls, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
connection = Connection("127.0.0.1", port)
times = []
for i in range(calls):
    start = time.perf_counter()
    response = connection.request("POST", "/v1/chat/completions", {"Content-Type": "application/json"}, body)
    times.append((time.perf_counter() - start) * 1000)
    assert response.status == 200, response.status
print(f"latency {name} {percentile(times, 50):.3f} {percentile(times, 99):.3f}")
PYTHON
        stop_gateway
    done
done

"$PY" - "$RESULTS" <<'PYTHON'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def med(kind, name, column=2):
    return statistics.median(float(r[column]) for r in rows if r[0] == kind and r[1] == name)
def each(kind, name, column=2):
    return [float(r[column]) for r in rows if r[0] == kind and r[1] == name]
print("| case | median | runs |")
print("|---|---:|---|")
if each("throughput", "one"):
    one, ten = med("throughput", "one"), med("throughput", "ten")
    print(f"| throughput, 1 route (req/s) | {one:.0f} | {', '.join(f'{x:.0f}' for x in each('throughput', 'one'))} |")
    print(f"| throughput, 10 routes (req/s) | {ten:.0f} | {', '.join(f'{x:.0f}' for x in each('throughput', 'ten'))} |")
    print(f"| 10 routes against 1, req/s | {100 * (ten / one - 1):+.1f} % | target: no more than 3 % lower |")
    cone, cten = med("throughput", "one", 3), med("throughput", "ten", 3)
    print(f"| gateway CPU per call, 1 route (us) | {cone:.1f} | {', '.join(f'{x:.1f}' for x in each('throughput', 'one', 3))} |")
    print(f"| gateway CPU per call, 10 routes (us) | {cten:.1f} | {', '.join(f'{x:.1f}' for x in each('throughput', 'ten', 3))} |")
    print(f"| 10 routes against 1, calls per CPU second (medians) | {100 * (cone / cten - 1):+.1f} % | target: no more than 3 % lower |")
    lone, lten = min(each("throughput", "one", 3)), min(each("throughput", "ten", 3))
    # Another process on the core only adds to a run's CPU per call (cache,
    # migrations): the least of several runs is the least disturbed one.
    print(f"| 10 routes against 1, calls per CPU second (least CPU of the runs: {lone:.1f} / {lten:.1f} us) | {100 * (lone / lten - 1):+.1f} % | target: no more than 3 % lower |")
for q, column in (("p50", 2), ("p99", 3)) if each("latency", "one") else ():
    a, b = med("latency", "one", column), med("latency", "failover", column)
    print(f"| latency {q}, direct route (ms) | {a:.3f} | {', '.join(f'{x:.3f}' for x in each('latency', 'one', column))} |")
    print(f"| latency {q}, after a refused upstream (ms) | {b:.3f} | {', '.join(f'{x:.3f}' for x in each('latency', 'failover', column))} |")
    print(f"| failover adds, {q} | {b - a:+.3f} ms | target: at most 1 ms |")
PYTHON
