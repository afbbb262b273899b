# Shared by bench/compare.sh and bench/workers.sh (sourced, not run): an nginx
# upstream, several gateways side by side on their own ports, wrk runs with
# the gateways' CPU time read from /proc around each run, and cleanup.
#
# The sourcing script sets HERE, ROOT, WORK (after mk_work), RESULTS, KEEP.
# Only 127.0.0.1 is used; every process started is stopped by its PID.

VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TWISTD="$VENV/bin/twistd"
ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
CLK_TCK="$(getconf CLK_TCK)"

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_tools() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
    [ -e "$ECHO_MODULE" ] || missing+=(libnginx-mod-http-echo)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: sudo apt-get install -y ${missing[*]}"
        log "installing ${missing[*]}"
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
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

wait_http() {  # wait_http URL SECONDS: until it answers 200
    local url="$1" limit="$2" i=0
    while [ "$i" -lt $((limit * 10)) ]; do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

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

children_of() { pgrep -P "$1" 2>/dev/null || true; }   # by parent PID, never by name

# -- processes ---------------------------------------------------------------------
NGINX_PID=""
declare -A GW_PID=()     # name -> pid of the process twistd runs (supervisor with workers)
declare -A GW_PORT=()
declare -A GW_CHILDREN=()  # name -> the worker PIDs seen at start (workers > 1)
GW_ORDER=()

cleanup() {
    local rc=$? name pid kids w
    trap - EXIT INT TERM
    for name in "${GW_ORDER[@]}"; do
        pid="${GW_PID[$name]:-}"
        [ -n "$pid" ] || continue
        kids="$(children_of "$pid")"
        stop_pid "$pid" TERM 15
        for w in $kids; do stop_pid "$w" KILL 1; done
    done
    if [ -n "$NGINX_PID" ]; then
        kids="$(children_of "$NGINX_PID")"
        stop_pid "$NGINX_PID" TERM 5
        for w in $kids; do stop_pid "$w" KILL 1; done
    fi
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}

mk_work() {
    WORK="$(mktemp -d "/tmp/llmgate-$BENCH_NAME.XXXXXX")"
    chmod 755 "$WORK"   # nginx workers may run as nobody
    RESULTS="$WORK/results.jsonl"
    : >"$RESULTS"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

start_upstream() {  # start_upstream PORT [CPU list, empty: unpinned]
    local port="$1" cpus="${2:-}" pin=()
    [ -n "$cpus" ] && pin=(taskset -c "$cpus")
    "$PY" "$HERE/gen_upstream.py" --dir "$WORK" --port "$port" --big-mb 0 \
        --echo-module "$ECHO_MODULE" >"$WORK/upstream.json"
    "${pin[@]}" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" \
        >"$WORK/nginx.out" 2>&1 &
    NGINX_PID=$!
    wait_http "http://127.0.0.1:$port/health" 10 || {
        cat "$WORK/nginx.out" "$WORK/nginx-error.log" >&2 2>/dev/null || true
        die "nginx did not start on 127.0.0.1:$port"
    }
    UPSTREAM_URL="http://127.0.0.1:$port"
}

# start_gateway NAME CONFIG PORT [CPU list, empty: unpinned]
# Runs in $WORK/gw-NAME, so a config's relative paths (trace directory, log
# file) land there.  base-url, type, host and port come from the command line.
start_gateway() {
    local name="$1" config="$2" port="$3" cpus="${4:-}" pin=() dir="$WORK/gw-$1"
    [ -n "$cpus" ] && pin=(taskset -c "$cpus")
    mkdir -p "$dir"
    (cd "$dir" && exec "${pin[@]}" "$TWISTD" --nodaemon --pidfile= llmgate \
        --config "$config" --base-url "$UPSTREAM_URL" --type openai \
        --host 127.0.0.1 --port "$port") >"$dir/gateway.log" 2>&1 &
    GW_PID[$name]=$!
    GW_PORT[$name]="$port"
    GW_ORDER+=("$name")
    wait_http "http://127.0.0.1:$port/health" 30 || {
        tail -30 "$dir/gateway.log" >&2 || true
        die "gateway $name did not start on 127.0.0.1:$port"
    }
    GW_CHILDREN[$name]="$(children_of "${GW_PID[$name]}" | tr '\n' ' ')"
}

# Sanity: the gateway answers the wrk call with 200 and nginx's very body.
sanity() {  # sanity NAME
    local name="$1" direct via
    direct="$(curl -fsS --max-time 5 -X POST -H 'content-type: application/json' -d '{}' \
        "$UPSTREAM_URL/v1/chat/completions")" || die "upstream does not answer"
    via="$(curl -sS --max-time 5 -X POST -H 'content-type: application/json' \
        -H 'authorization: Bearer sk-bench-not-a-real-key' \
        -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}' \
        -w '\n%{http_code}' "http://127.0.0.1:${GW_PORT[$name]}/v1/chat/completions")" \
        || die "gateway $name does not answer"
    [ "${via##*$'\n'}" = 200 ] || die "gateway $name answered HTTP ${via##*$'\n'}: ${via%$'\n'*}"
    [ "${via%$'\n'*}" = "$direct" ] || die "gateway $name changed the body"
}

# -- CPU accounting ------------------------------------------------------------------
pid_ticks() {  # utime + stime of one process, all its threads (clock ticks)
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
tree_ticks() {  # a process and its children (a supervisor and its workers)
    local total t c
    total="$(pid_ticks "$1")"
    for c in $(children_of "$1"); do
        t="$(pid_ticks "$c")"; total=$((total + t))
    done
    echo "$total"
}
workers_ticks() {  # "pid:ticks pid:ticks" for the children of $1
    local c out=""
    for c in $(children_of "$1"); do out="$out $c:$(pid_ticks "$c")"; done
    echo "${out# }"
}
cpu_line() {  # "busy total" jiffies of /proc/stat line $1 (cpu, cpu0, cpu1)
    awk -v c="$1" '$1 == c { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}
steal_of() {  # jiffies the hypervisor took from /proc/stat line $1 (part of cpu_line's busy)
    awk -v c="$1" '$1 == c { print $9 }' /proc/stat
}
# children_seconds: this shell's waited-for children's CPU (wrk, through timeout).
. "$HERE/children_cpu.sh"
# Wait until the gateway's CPU time stops moving (a trace writer thread
# catching up after wrk stopped), at most 5 s, so its work is counted.
settle() {  # settle PID
    local a b i=0
    a="$(tree_ticks "$1")"
    while [ "$i" -lt 25 ]; do
        sleep 0.2
        b="$(tree_ticks "$1")"
        [ "$b" = "$a" ] && return 0
        a="$b"; i=$((i + 1))
    done
}

# run_wrk TAG_JSON NAME SECONDS CONNS [wrk prefix words...]
# One wrk run against gateway NAME; appends wrk's JSON line (post.lua) and a
# "cpu" line: gateway ticks (whole process tree, and per worker; gw_ticks
# until the gateway's CPU settled after wrk stopped, gw_ticks_wall within
# wrk's wall time only), nginx ticks, wrk's CPU seconds, /proc/stat
# busy/total for cpu, cpu0, cpu1 (up to the settled point), the wall time
# of the wrk run and up to the settled point.
run_wrk() {
    local tag="$1" name="$2" secs="$3" conns="$4"; shift 4
    local pid="${GW_PID[$name]}" url="http://127.0.0.1:${GW_PORT[$name]}/v1/chat/completions"
    local g0 w0 n0 c0 a0 b0 z0 s0 t0 gm g1 w1 n1 c1 a1 b1 z1 s1 t1 t2
    g0="$(tree_ticks "$pid")"; w0="$(workers_ticks "$pid")"; n0="$(tree_ticks "$NGINX_PID")"
    children_seconds; c0="$CHILD_S"; a0="$(cpu_line cpu)"; b0="$(cpu_line cpu0)"; z0="$(cpu_line cpu1)"
    s0="$(steal_of cpu0)"
    t0="$(date +%s.%N)"
    BENCH_OUT="$RESULTS" BENCH_TAG="$tag," \
        timeout $((secs + 30)) "$@" wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s \
        -s "$HERE/post.lua" "$url" >>"$WORK/wrk.log" 2>&1 \
        || log "wrk against $name exited with $?"
    t1="$(date +%s.%N)"
    gm="$(tree_ticks "$pid")"
    settle "$pid"
    t2="$(date +%s.%N)"
    g1="$(tree_ticks "$pid")"; w1="$(workers_ticks "$pid")"; n1="$(tree_ticks "$NGINX_PID")"
    children_seconds; c1="$CHILD_S"; a1="$(cpu_line cpu)"; b1="$(cpu_line cpu0)"; z1="$(cpu_line cpu1)"
    s1="$(steal_of cpu0)"
    printf '{%s,"kind":"cpu","clk_tck":%s,"wall":%s,"wall_settled":%s,"gw_ticks":%s,"gw_ticks_wall":%s,"nginx_ticks":%s,"wrk_cpu_s":%s,"workers0":"%s","workers1":"%s","cpu":[%s,%s],"cpu0":[%s,%s],"cpu1":[%s,%s],"steal0":%s}\n' \
        "$tag" "$CLK_TCK" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
        "$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.3f", b - a }')" "$((g1 - g0))" "$((gm - g0))" "$((n1 - n0))" \
        "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')" "$w0" "$w1" \
        "$(echo "$a1 $a0" | awk '{print $1-$3}')" "$(echo "$a1 $a0" | awk '{print $2-$4}')" \
        "$(echo "$b1 $b0" | awk '{print $1-$3}')" "$(echo "$b1 $b0" | awk '{print $2-$4}')" \
        "$(echo "$z1 $z0" | awk '{print $1-$3}')" "$(echo "$z1 $z0" | awk '{print $2-$4}')" \
        "$((s1 - s0))" >>"$RESULTS"
}
