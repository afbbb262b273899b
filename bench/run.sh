#!/usr/bin/env bash
# llmgate benchmark harness: an nginx upstream, the gateway in front of it,
# and the same load sent to both in the same run.  See bench/README.md.
#
#   bash bench/run.sh [--quick] [--config FILE] [--cases LIST] [--keep] [--out DIR]
#
#   --quick        1 repetition and shorter durations (about a minute)
#   --config FILE  start the gateway with --config FILE (a YAML like
#                  etc/gateway.yaml, e.g. with middlewares); --base-url,
#                  --port, --host, --type and --log-level are still given on
#                  the command line and override the file; the gateway
#                  runs in the temp dir, so relative paths in the file
#                  (e.g. a trace directory) land there
#   --cases LIST   comma-separated subset of throughput,latency,floor,sse,sse_apart,
#                  sse_warm,sse_floor,memory
#   --keep         keep the temporary directory (logs, raw results)
#   --out DIR      copy the results table and raw results into DIR
#
# Environment: BENCH_GATEWAY_PORT (18080), BENCH_UPSTREAM_PORT (18081),
# BENCH_FLOOR_PORT (18082), BENCH_PROXY_PORT (18083, the SSE floor's nginx),
# BENCH_GATEWAY_CPU (0), BENCH_LOAD_CPU (1), BENCH_PROBE_CPU (the SSE probe's;
# the gateway's CPU), BENCH_REPS, BENCH_BIG_MB,
# BENCH_RATE_MB (4), VENV (.venv).  Only 127.0.0.1 is ever used.
set -euo pipefail
# Numbers are parsed from `times`, awk and /proc: one decimal point, whatever the locale.
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"

QUICK=0
CONFIG=""
CASES="throughput,latency,floor,sse,sse_apart,sse_warm,sse_floor,memory"
KEEP=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --config) CONFIG="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
        --config=*) v="${1#--config=}"; CONFIG="$(cd "$(dirname "$v")" && pwd)/$(basename "$v")" ;;
        --cases) CASES="$2"; shift ;;
        --cases=*) CASES="${1#--cases=}" ;;
        --keep) KEEP=1 ;;
        --out) OUT="$2"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        -h|--help) sed -n '2,23p' "$HERE/run.sh" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$CONFIG" ] && [ ! -r "$CONFIG" ]; then
    echo "run.sh: cannot read config file $CONFIG" >&2; exit 2
fi
if [ -n "$OUT" ]; then
    mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
fi
cd "$ROOT"

GW_PORT="${BENCH_GATEWAY_PORT:-18080}"
UP_PORT="${BENCH_UPSTREAM_PORT:-18081}"
FLOOR_PORT="${BENCH_FLOOR_PORT:-18082}"
PROXY_PORT="${BENCH_PROXY_PORT:-18083}"
GW_CPU="${BENCH_GATEWAY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
# The SSE probe's client runs on the gateway's CPU, so that its direct path
# (client -> nginx) crosses CPUs as often as the path through the gateway does
# (nginx -> gateway); see "Where the SSE client runs" in bench/README.md.
PROBE_CPU="${BENCH_PROBE_CPU:-$GW_CPU}"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TWISTD="$VENV/bin/twistd"
ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
RATE_MB="${BENCH_RATE_MB:-4}"

if [ "$QUICK" = 1 ]; then
    REPS="${BENCH_REPS:-1}"; TP_SECONDS=3; LAT_SECONDS=3; WARM_SECONDS=1; FLOOR_SECONDS=2
    SSE_N=50; SSE_WARMUP=5; BIG_MB="${BENCH_BIG_MB:-100}"; MEM_MAX_SECONDS=60
else
    REPS="${BENCH_REPS:-3}"; TP_SECONDS=10; LAT_SECONDS=5; WARM_SECONDS=2; FLOOR_SECONDS=4
    SSE_N=200; SSE_WARMUP=10; BIG_MB="${BENCH_BIG_MB:-400}"; MEM_MAX_SECONDS=150
fi
TP_CONNS=50
SSE_EVENTS=20
SSE_GAP_MS=10

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
has_case() { case ",$CASES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# -- tools ---------------------------------------------------------------------
ensure_tools() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
    [ -e "$ECHO_MODULE" ] || missing+=(libnginx-mod-http-echo)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v hey >/dev/null 2>&1 || missing+=(hey)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: run as root, or: sudo apt-get install -y ${missing[*]}"
        command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get here"
        log "installing ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
    [ -x "$TWISTD" ] || die "$TWISTD not found: run 'make setup' first"
}

port_free() {
    "$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

# Wait until URL answers 200, at most $2 seconds.
wait_http() {
    local url="$1" limit="$2" i=0
    while [ "$i" -lt $((limit * 10)) ]; do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

# -- processes -------------------------------------------------------------------
WORK=""
NGINX_PID=""
GW_PID=""
FLOOR_PID=""
PROXY_PID=""
BG_PID=""

stop_pid() {  # stop_pid PID SIGNAL SECONDS: signal, wait, then SIGKILL
    local pid="$1" sig="$2" limit="$3" i=0
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt $((limit * 10)) ]; do
        sleep 0.1; i=$((i + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after SIG$sig + ${limit}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$FLOOR_PID" TERM 5
    stop_pid "$PROXY_PID" TERM 5
    stop_pid "$BG_PID" TERM 5
    stop_pid "$GW_PID" TERM 15
    if [ -n "$NGINX_PID" ]; then
        local workers
        workers="$(pgrep -P "$NGINX_PID" 2>/dev/null || true)"
        stop_pid "$NGINX_PID" TERM 5
        for w in $workers; do stop_pid "$w" KILL 1; done
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP" = 1 ]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_nginx() {
    taskset -c "$LOAD_CPU" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" \
        >"$WORK/nginx.out" 2>&1 &
    NGINX_PID=$!
    wait_http "http://127.0.0.1:$UP_PORT/health" 10 || {
        cat "$WORK/nginx.out" "$WORK/nginx-error.log" >&2 2>/dev/null || true
        die "nginx did not start on 127.0.0.1:$UP_PORT"
    }
}

start_gateway() {
    local args=(--nodaemon --pidfile= llmgate)
    [ -n "$CONFIG" ] && args+=(--config "$CONFIG")
    args+=(--base-url "http://127.0.0.1:$UP_PORT" --type openai
           --port "$GW_PORT" --host 127.0.0.1 --log-level warn)
    # Started from the temp dir: relative paths in a config (a trace
    # middleware's directory, say) land there and go away with it.
    (cd "$WORK" && exec taskset -c "$GW_CPU" "$TWISTD" "${args[@]}") >"$WORK/gateway.log" 2>&1 &
    GW_PID=$!
    wait_http "http://127.0.0.1:$GW_PORT/health" 30 || {
        tail -40 "$WORK/gateway.log" >&2 || true
        die "llmgate did not start on 127.0.0.1:$GW_PORT"
    }
}

# Contention check: how much of the gateway's CPU went to other processes
# during a measurement (other people's jobs on a shared machine skew every
# figure; the table prints this so a noisy run can be recognised).
cpu_busy_total() {  # "busy total steal" jiffies of CPU $1
    awk -v c="cpu$1" '$1 == c { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6, $9 }' /proc/stat
}
proc_jiffies() {  # utime + stime of PID $1
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
. "$HERE/children_cpu.sh"
CLK_TCK="$(getconf CLK_TCK)"
# noise_begin PID [client]: with "client", what this shell's children use
# meanwhile (a client run on the gateway's CPU) counts as the measurement's own.
NOISE_START=""
NOISE_CLIENT=0
noise_begin() {
    NOISE_CLIENT=0
    [ "${2:-}" = client ] && NOISE_CLIENT=1
    children_seconds
    NOISE_START="$(cpu_busy_total "$GW_CPU") $(proc_jiffies "$1") $CHILD_S"
}
noise_end() {  # noise_end PID CASE TARGET REP
    local now
    children_seconds
    now="$(cpu_busy_total "$GW_CPU") $(proc_jiffies "$1") $CHILD_S"
    echo "$NOISE_START $now" | awk -v c="$2" -v t="$3" -v r="$4" -v client="$NOISE_CLIENT" \
        -v hz="$CLK_TCK" '{
        busy = $6 - $1; total = $7 - $2; steal = $8 - $3; own = $9 - $4
        if (client) own += ($10 - $5) * hz
        other = 0; mine = 0; stolen = 0
        if (total > 0) { other = 100 * (busy - own) / total; mine = 100 * own / total; stolen = 100 * steal / total }
        if (other < 0) other = 0
        printf("{\"case\":\"noise\",\"of\":\"%s\",\"target\":\"%s\",\"rep\":%s,\"other_cpu_pct\":%.1f,\"own_cpu_pct\":%.1f,\"steal_pct\":%.1f}\n", c, t, r, other, mine, stolen)
    }' >>"$RESULTS"
}

rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

# -- cases -----------------------------------------------------------------------
RESULTS=""

run_wrk() {  # run_wrk CASE TARGET REP CONNS SECONDS URL [extra wrk args]
    local case="$1" target="$2" rep="$3" conns="$4" secs="$5" url="$6"; shift 6
    local watch="$GW_PID"
    case "$target" in floor*) watch="$FLOOR_PID" ;; esac
    noise_begin "$watch"
    BENCH_OUT="$RESULTS" \
    BENCH_TAG="\"case\":\"$case\",\"target\":\"$target\",\"rep\":$rep," \
        timeout $((secs + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s -s "$HERE/post.lua" "$@" "$url" \
        >>"$WORK/wrk.log" 2>&1 || log "wrk $case/$target rep $rep exited with $?"
    noise_end "$watch" "$case" "$target" "$rep"
}

DIRECT_URL=""
GATEWAY_URL=""

case_throughput() {
    log "throughput: wrk -t1 -c$TP_CONNS -d${TP_SECONDS}s, $REPS repetition(s)"
    run_wrk warmup direct 0 "$TP_CONNS" "$WARM_SECONDS" "$DIRECT_URL"
    run_wrk warmup gateway 0 "$TP_CONNS" "$WARM_SECONDS" "$GATEWAY_URL"
    for rep in $(seq 1 "$REPS"); do
        run_wrk throughput direct "$rep" "$TP_CONNS" "$TP_SECONDS" "$DIRECT_URL"
        run_wrk throughput gateway "$rep" "$TP_CONNS" "$TP_SECONDS" "$GATEWAY_URL"
    done
}

case_latency() {
    log "latency at concurrency 1: wrk -t1 -c1 -d${LAT_SECONDS}s, $REPS repetition(s)"
    for rep in $(seq 1 "$REPS"); do
        run_wrk latency direct "$rep" 1 "$LAT_SECONDS" "$DIRECT_URL"
        run_wrk latency gateway "$rep" 1 "$LAT_SECONDS" "$GATEWAY_URL"
    done
}

case_floor() {
    log "floor: bare twisted.web on CPU $GW_CPU, wrk -t1 -c$TP_CONNS -d${FLOOR_SECONDS}s, $REPS repetition(s)"
    local variant flag
    for variant in floor floor_noform; do
        flag=""
        [ "$variant" = floor_noform ] && flag=--no-form-parsing
        taskset -c "$GW_CPU" "$PY" "$HERE/floor_server.py" "$FLOOR_PORT" $flag \
            >"$WORK/$variant.log" 2>&1 &
        FLOOR_PID=$!
        if ! wait_http "http://127.0.0.1:$FLOOR_PORT/" 15; then
            log "floor server did not start: $(tail -3 "$WORK/$variant.log")"
            stop_pid "$FLOOR_PID" TERM 5; FLOOR_PID=""
            continue
        fi
        run_wrk warmup "$variant" 0 "$TP_CONNS" 1 "http://127.0.0.1:$FLOOR_PORT/v1/chat/completions"
        for rep in $(seq 1 "$REPS"); do
            run_wrk floor "$variant" "$rep" "$TP_CONNS" "$FLOOR_SECONDS" \
                "http://127.0.0.1:$FLOOR_PORT/v1/chat/completions"
        done
        stop_pid "$FLOOR_PID" TERM 5
        FLOOR_PID=""
    done
}

probe_sse() {  # probe_sse PORT CASE CPU: the SSE probe on CPU, direct and through PORT
    timeout 200 taskset -c "$3" "$PY" "$HERE/sse_probe.py" \
        --direct "127.0.0.1:$UP_PORT" --gateway "127.0.0.1:$1" --case "$2" \
        -n "$SSE_N" --warmup "$SSE_WARMUP" --expect-events $((SSE_EVENTS + 1)) \
        --max-seconds 170 --json-out "$RESULTS" \
        || log "sse_probe ($2) exited with $?"
}

case_sse() {
    log "SSE: $SSE_N streams each way ($SSE_EVENTS events ${SSE_GAP_MS} ms apart + [DONE])," \
        "alternating, client on CPU $PROBE_CPU"
    local client=""
    [ "$PROBE_CPU" = "$GW_CPU" ] && client=client
    noise_begin "$GW_PID" $client
    probe_sse "$GW_PORT" sse "$PROBE_CPU"
    noise_end "$GW_PID" sse both 1
}

# The same probe with its client beside the upstream, on the load CPU.  The
# direct path then never leaves that CPU, while every event through the
# gateway crosses CPUs twice (nginx -> gateway -> client): what that placement
# adds is mostly this VM's cost of waking a sleeping CPU (information only).
case_sse_apart() {
    log "SSE apart: the same probe with its client on CPU $LOAD_CPU, beside the upstream"
    probe_sse "$GW_PORT" sse_apart "$LOAD_CPU"
}

# The same probe while a light background load (one small call every 2 ms,
# about 400 a second, from the load CPU) keeps the gateway from idling
# between streams, as any gateway with other users would be: what a stream
# costs a gateway that is not waking from 200 ms of sleep.
case_sse_warm() {
    log "SSE warm: the same probe with one background call every 2 ms"
    taskset -c "$LOAD_CPU" "$PY" "$HERE/background.py" --target "127.0.0.1:$GW_PORT" \
        --interval 0.002 --seconds 200 >>"$WORK/background.log" 2>&1 &
    BG_PID=$!
    probe_sse "$GW_PORT" sse_warm "$PROBE_CPU"
    stop_pid "$BG_PID" TERM 5
    BG_PID=""
}

# The SSE floor: nginx as an unbuffered reverse proxy (C, no Python) in the
# gateway's place, on the gateway's CPU, probed the same way.  What it adds
# is what this machine charges any relay on a core of its own: a wake-up
# across cores for each event, both ways.
case_sse_floor() {
    cat >"$WORK/proxy.conf" <<PROXY
daemon off;
master_process off;
worker_processes 1;
pid $WORK/proxy.pid;
error_log $WORK/proxy-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/proxy-body;
    proxy_temp_path $WORK/proxy-temp;
    fastcgi_temp_path $WORK/proxy-fastcgi;
    uwsgi_temp_path $WORK/proxy-uwsgi;
    scgi_temp_path $WORK/proxy-scgi;
    upstream up { server 127.0.0.1:$UP_PORT; keepalive 16; }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            tcp_nodelay on;
        }
    }
}
PROXY
    taskset -c "$GW_CPU" nginx -p "$WORK" -c "$WORK/proxy.conf" >"$WORK/proxy.out" 2>&1 &
    PROXY_PID=$!
    wait_http "http://127.0.0.1:$PROXY_PORT/health" 10 || {
        log "the nginx proxy for the SSE floor did not start; skipped"
        stop_pid "$PROXY_PID" TERM 5; PROXY_PID=""
        return 0
    }
    log "SSE floor: the same probe through nginx as a reverse proxy on CPU $GW_CPU"
    probe_sse "$PROXY_PORT" sse_floor "$PROBE_CPU"
    stop_pid "$PROXY_PID" TERM 5
    PROXY_PID=""
}

case_memory() {
    local size
    size="$(stat -c %s "$WORK/www/v1/big-stream")"
    log "memory: slow reader, $((size / 1048576)) MiB through the gateway at ${RATE_MB} MiB/s" \
        "(time limit ${MEM_MAX_SECONDS}s)"
    noise_begin "$GW_PID"
    timeout $((MEM_MAX_SECONDS + 30)) taskset -c "$LOAD_CPU" "$PY" "$HERE/slow_reader.py" \
        --target "127.0.0.1:$GW_PORT" --path /v1/big-stream --rate-mb "$RATE_MB" \
        --rcvbuf 16384 --max-seconds "$MEM_MAX_SECONDS" --watch-pid "$GW_PID" \
        --expect-bytes "$size" --json-out "$RESULTS" \
        || log "slow_reader exited with $?"
    noise_end "$GW_PID" memory gateway 1
}

sanity() {
    local direct via
    direct="$(curl -fsS --max-time 5 -X POST -H 'content-type: application/json' -d '{}' "$DIRECT_URL")" \
        || die "upstream does not answer POST /v1/chat/completions"
    via="$(curl -sS --max-time 5 -X POST -H 'content-type: application/json' \
        -H 'authorization: Bearer sk-bench-not-a-real-key' -d '{}' \
        -w '\n%{http_code}' "$GATEWAY_URL")" || die "gateway does not answer POST /v1/chat/completions"
    [ "${via##*$'\n'}" = 200 ] || die "gateway answered HTTP ${via##*$'\n'}: ${via%$'\n'*}"
    [ "${via%$'\n'*}" = "$direct" ] || die "gateway changed the body: ${via%$'\n'*}"
    local events
    events="$(curl -sS -N --max-time 10 -X POST -H 'content-type: application/json' \
        -d '{"stream":true}' "http://127.0.0.1:$GW_PORT/v1/stream" | grep -c '^data:' || true)"
    [ "$events" = $((SSE_EVENTS + 1)) ] \
        || die "gateway relayed $events SSE events of $((SSE_EVENTS + 1))"
}

# -- main ------------------------------------------------------------------------
ensure_tools
[ "$(nproc)" -ge 2 ] || { log "only one CPU: gateway and load share CPU 0"; GW_CPU=0; LOAD_CPU=0; PROBE_CPU=0; }
for port in "$GW_PORT" "$UP_PORT" "$FLOOR_PORT" "$PROXY_PORT"; do
    port_free "$port" || die "port $port on 127.0.0.1 is taken (set BENCH_GATEWAY_PORT / BENCH_UPSTREAM_PORT / BENCH_FLOOR_PORT / BENCH_PROXY_PORT)"
done

WORK="$(mktemp -d /tmp/llmgate-bench.XXXXXX)"
chmod 755 "$WORK"   # nginx workers may run as nobody
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
DIRECT_URL="http://127.0.0.1:$UP_PORT/v1/chat/completions"
GATEWAY_URL="http://127.0.0.1:$GW_PORT/v1/chat/completions"

BIG=0
has_case memory && BIG="$BIG_MB"
log "generating the upstream in $WORK (big stream: ${BIG} MiB)"
"$PY" "$HERE/gen_upstream.py" --dir "$WORK" --port "$UP_PORT" --events "$SSE_EVENTS" \
    --gap-ms "$SSE_GAP_MS" --big-mb "$BIG" --echo-module "$ECHO_MODULE" >"$WORK/upstream.json"
start_nginx
log "nginx on 127.0.0.1:$UP_PORT (pid $NGINX_PID, CPU $LOAD_CPU)"
start_gateway
log "llmgate on 127.0.0.1:$GW_PORT (pid $GW_PID, CPU $GW_CPU, RSS $(rss_mib "$GW_PID") MiB)"
sanity

START=$SECONDS
has_case throughput && case_throughput
has_case latency && case_latency
has_case floor && case_floor
has_case sse && case_sse
has_case sse_apart && case_sse_apart
has_case sse_warm && case_sse_warm
has_case sse_floor && case_sse_floor
has_case memory && case_memory
kill -0 "$GW_PID" 2>/dev/null || log "the gateway died during the run (see its log below)"

"$PY" - "$WORK/meta.json" <<EOF
import datetime, json, sys
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "quick": bool($QUICK), "reps": $REPS, "config": "$CONFIG",
    "gateway_cpu": "$GW_CPU", "load_cpu": "$LOAD_CPU", "probe_cpu": "$PROBE_CPU",
    "throughput_seconds": $TP_SECONDS, "throughput_connections": $TP_CONNS,
    "latency_seconds": $LAT_SECONDS, "stream_gap_ms": $SSE_GAP_MS,
    "floor_seconds": $FLOOR_SECONDS, "rate_mib_s": $RATE_MB,
    "stream_events": $SSE_EVENTS, "cases": "$CASES",
}, open(sys.argv[1], "w"))
EOF

log "done in $((SECONDS - START)) s; gateway RSS now $(rss_mib "$GW_PID") MiB"
echo
"$PY" "$HERE/report.py" "$RESULTS" --meta "$WORK/meta.json" | tee "$WORK/table.txt"

# Anything the gateway logged at warn or above is worth a look.
if [ -s "$WORK/gateway.log" ]; then
    echo
    echo "gateway log ($(wc -l <"$WORK/gateway.log") lines at --log-level warn; last 15):"
    tail -15 "$WORK/gateway.log" | cut -c1-300 | sed 's/^/  | /'
else
    echo "gateway log: empty (nothing at warn or above)."
fi
if grep -q . "$WORK/nginx-error.log" 2>/dev/null; then
    echo "nginx error log (last 5):"
    tail -5 "$WORK/nginx-error.log" | sed 's/^/  | /'
fi

if [ -n "$OUT" ]; then
    cp "$WORK/table.txt" "$WORK/results.jsonl" "$WORK/meta.json" "$WORK/gateway.log" "$OUT/"
    log "results copied to $OUT"
fi
