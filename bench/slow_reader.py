#!/usr/bin/env python3
"""
A slow streaming client, for the gateway's memory test: it POSTs once, then
reads the (large) SSE answer at a fixed rate through a small socket receive
buffer, while sampling a process's resident memory (VmRSS) and CPU time.

    slow_reader.py --target 127.0.0.1:18080 --path /v1/big-stream \
        --rate-mb 4 --max-seconds 150 --watch-pid GATEWAY_PID

If the gateway honours backpressure its memory stays flat; if it buffers what
the client has not read yet, RSS grows by roughly (upstream speed - client
speed) x time.  The read stops at --max-seconds whatever happens (the output
then says the stream was cut by the time limit).

Reports RSS before the request, the maximum during it, and after it (once the
stream has ended and --settle seconds have passed), in MiB.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rawhttp import Connection, ProtocolError, parse_hostport  # noqa: E402

MIB = 1024 * 1024
BODY = json.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Go on."}]}
).encode()


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description="slow SSE reader with RSS sampling")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--path", default="/v1/big-stream")
    parser.add_argument("--rate-mb", type=float, default=4.0, help="read rate, MiB/s")
    parser.add_argument("--rcvbuf", type=int, default=16384, help="SO_RCVBUF, bytes")
    parser.add_argument("--read-size", type=int, default=16384)
    parser.add_argument("--max-seconds", type=float, default=150.0)
    parser.add_argument("--watch-pid", type=int, help="process whose VmRSS is sampled")
    parser.add_argument("--sample-every", type=float, default=0.2, help="seconds")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before 'after'")
    parser.add_argument("--expect-bytes", type=int, default=0, help="body size, 0: unknown")
    parser.add_argument("--label", default="gateway")
    parser.add_argument("--json-out", help="append one JSON line here")
    args = parser.parse_args()

    pid = args.watch_pid
    rate = args.rate_mb * MIB
    state = {"bytes": 0, "max_rss": 0, "next_sample": 0.0, "tail": b"", "samples": 0}
    before = rss_kib(pid) if pid else None
    cpu_before = cpu_seconds(pid) if pid else None
    start = time.monotonic()
    deadline = start + args.max_seconds
    cut = {"by_time": False}

    def sample(t: float) -> None:
        if pid and t >= state["next_sample"]:
            value = rss_kib(pid)
            if value is not None:
                state["max_rss"] = max(state["max_rss"], value)
                state["samples"] += 1
            state["next_sample"] = t + args.sample_every

    def on_data(piece: bytes, _t_ns: int) -> bool:
        state["bytes"] += len(piece)
        state["tail"] = (state["tail"] + piece)[-64:]
        t = time.monotonic()
        sample(t)
        if t > deadline:
            cut["by_time"] = True
            return False
        ahead = state["bytes"] / rate - (t - start)
        if ahead > 0:
            # Sleep in slices so RSS sampling continues while we wait.
            end = t + ahead
            while True:
                t = time.monotonic()
                if t >= end or t > deadline:
                    break
                time.sleep(min(args.sample_every, end - t))
                sample(time.monotonic())
        return True

    host, port = parse_hostport(args.target)
    conn = Connection(host, port, timeout=30.0, rcvbuf=args.rcvbuf, recv_size=args.read_size)
    error = None
    status = 0
    complete = False
    try:
        response = conn.request(
            "POST",
            args.path,
            {"Content-Type": "application/json", "Accept": "text/event-stream",
             "Authorization": "Bearer sk-bench-not-a-real-key"},
            BODY,
            on_data,
        )
        status = response.status
        complete = response.complete
    except (OSError, ProtocolError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    elapsed = time.monotonic() - start
    sample(time.monotonic() + args.sample_every)
    time.sleep(args.settle)
    after = rss_kib(pid) if pid else None
    cpu_after = cpu_seconds(pid) if pid else None

    got = state["bytes"]
    ended_well = complete and state["tail"].rstrip().endswith(b"data: [DONE]")
    if args.expect_bytes and got != args.expect_bytes:
        ended_well = False
    result = {
        "case": "memory",
        "target": args.label,
        "status": status,
        "error": error,
        "bytes": got,
        "expected_bytes": args.expect_bytes,
        "complete": ended_well,
        "cut_by_time_limit": cut["by_time"],
        "seconds": elapsed,
        "rate_mib_s": got / MIB / elapsed if elapsed else 0.0,
        "target_rate_mib_s": args.rate_mb,
        "rcvbuf": args.rcvbuf,
    }
    if pid:
        result.update(
            rss_before_mib=(before or 0) / 1024,
            rss_max_mib=max(state["max_rss"], before or 0, after or 0) / 1024,
            rss_after_mib=(after or 0) / 1024,
            rss_growth_mib=(max(state["max_rss"], after or 0) - (before or 0)) / 1024,
            rss_samples=state["samples"],
            cpu_seconds=(cpu_after - cpu_before)
            if cpu_after is not None and cpu_before is not None
            else None,
        )
    print(
        f"slow_reader: HTTP {status} {got / MIB:.1f} MiB in {elapsed:.1f} s "
        f"({result['rate_mib_s']:.2f} MiB/s), complete={ended_well}"
        + (" [cut by time limit]" if cut["by_time"] else "")
        + (f" error={error}" if error else "")
        + (
            f"; RSS before {result['rss_before_mib']:.1f} MiB, max {result['rss_max_mib']:.1f}"
            f", after {result['rss_after_mib']:.1f}"
            if pid
            else ""
        ),
        file=sys.stderr,
    )
    if args.json_out:
        with open(args.json_out, "a") as out:
            out.write(json.dumps(result) + "\n")
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
