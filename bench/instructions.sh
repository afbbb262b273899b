#!/usr/bin/env bash
# Instructions per call of gateway configurations, counted by valgrind's
# callgrind: a figure that other processes on the machine cannot move, for
# A/B comparisons that CPU time on a shared machine cannot settle.  See
# bench/README.md, "OpenTelemetry export".
#
#   bash bench/instructions.sh [--configs LIST] [--calls N] [--keep] [--follow]
#
#   --configs LIST  names of bench/configs/NAME.yaml (default: default,otel,otel-unsampled)
#   --calls N       calls counted per config (default 1024), after 300 unmeasured
#   --keep          keep the temporary directory (callgrind files, logs)
#   --follow        a client follows /api/events of each gateway while counting
#                   (bench/follower.py --events-only: the live view's feed)
#   --clients N     N sequential clients at once (default 1), so that work done
#                   once per interval (timers, batched reads and writes) is
#                   shared by calls as under load, not paid by each call as
#                   callgrind's 50-fold slowdown otherwise makes it
#
# Each gateway runs alone under callgrind (about 50 times slower), on one
# keep-alive connection from a sequential client; the counters are zeroed
# after the warm-up and dumped after the calls, every thread included (the
# OpenTelemetry export thread too).  OTEL_BSP_SCHEDULE_DELAY is set to 60 s so
# spans leave in full batches, as under load.  Ports: BENCH_INSTR_PORT (18680:
# nginx; gateways on the next ports), refused when taken.  Only 127.0.0.1.
set -euo pipefail
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BENCH_NAME=instructions
# shellcheck source=multi_lib.sh
. "$HERE/multi_lib.sh"

CONFIGS="default,otel,otel-unsampled"
CALLS=1024
KEEP=0
FOLLOW=0
CLIENTS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --configs) CONFIGS="$2"; shift ;;
        --calls) CALLS="$2"; shift ;;
        --keep) KEEP=1 ;;
        --follow) FOLLOW=1 ;;
        --clients) CLIENTS="$2"; shift ;;
        -h|--help) sed -n '2,24p' "$HERE/instructions.sh" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "instructions.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
cd "$ROOT"
command -v valgrind >/dev/null 2>&1 || {
    [ "$(id -u)" = 0 ] || die "missing valgrind: sudo apt-get install -y valgrind"
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind
}
need_tools
BASE_PORT="${BENCH_INSTR_PORT:-18680}"
# configs/otel.yaml sends its spans to the nginx on this port.
export BENCH_COMPARE_PORT="$BASE_PORT"
IFS=, read -r -a NAMES <<<"$CONFIGS"
for name in "${NAMES[@]}"; do
    [ -r "$HERE/configs/$name.yaml" ] || die "no config bench/configs/$name.yaml"
done

# A port someone else holds would answer in our place: refuse to start.
for i in $(seq 0 "${#NAMES[@]}"); do
    port_free $((BASE_PORT + i)) || die "port $((BASE_PORT + i)) on 127.0.0.1 is taken (set BENCH_INSTR_PORT)"
done

mk_work
start_upstream "$BASE_PORT" ""
cat >"$WORK/drive.py" <<'EOF'
import http.client, json, sys, threading
port, n, clients = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})
def client(calls):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(calls):
        connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200, answer.status
threads = [threading.Thread(target=client, args=(n // clients + (i < n % clients),)) for i in range(clients)]
for thread in threads: thread.start()
for thread in threads: thread.join()
EOF

i=1
printf '%-16s %14s %10s %16s\n' config "instr/call" "vs first" "other threads"
first=""
for name in "${NAMES[@]}"; do
    port=$((BASE_PORT + i)); i=$((i + 1))
    out="$WORK/callgrind-$name.out"
    # A config with its own upstreams names the upstream itself (through
    # BENCH_COMPARE_PORT); --base-url would be the one-upstream shorthand.
    upstream=(--base-url "$UPSTREAM_URL" --type openai)
    grep -q '^upstreams:' "$HERE/configs/$name.yaml" && upstream=()
    (cd "$WORK" && OTEL_BSP_SCHEDULE_DELAY=60000 exec valgrind --tool=callgrind \
        --callgrind-out-file="$out" "$PY" "$TWISTD" --nodaemon --pidfile= llmgate \
        --config "$HERE/configs/$name.yaml" "${upstream[@]}" \
        --host 127.0.0.1 --port "$port") >"$WORK/gateway-$name.log" 2>&1 &
    pid=$!
    GW_PID[$name]=$pid; GW_ORDER+=("$name")
    wait_http "http://127.0.0.1:$port/health" 120 || die "gateway $name did not start"
    follower=""
    if [ "$FOLLOW" = 1 ]; then
        "$PY" "$HERE/follower.py" --url "http://127.0.0.1:$port" --events-only \
            --report "$WORK/follower-$name.json" &
        follower=$!
    fi
    "$PY" "$WORK/drive.py" "$port" 300 "$CLIENTS"
    callgrind_control -z "$pid" >/dev/null 2>&1
    "$PY" "$WORK/drive.py" "$port" "$CALLS" "$CLIENTS"
    callgrind_control -d "$pid" >/dev/null 2>&1
    for _ in $(seq 1 30); do [ -s "$out.1" ] && break; sleep 1; done
    [ -z "$follower" ] || kill -TERM "$follower" 2>/dev/null || true
    total="$(awk '/^summary:/ { print $2 }' "$out.1")"
    threads="$(callgrind_annotate --inclusive=yes "$out.1" 2>/dev/null \
        | awk '/:thread_run / && !seen { gsub(",", "", $1); print $1; seen = 1 }')"
    per=$((total / CALLS))
    [ -n "$first" ] || first="$per"
    printf '%-16s %14d %10.3f %16d\n' "$name" "$per" \
        "$(awk -v a="$per" -v b="$first" 'BEGIN { print a / b }')" "$(( ${threads:-0} / CALLS ))"
    stop_pid "$pid" TERM 30
done
