#!/usr/bin/env python3
"""
SSE timing probe: time to first event and inter-event gaps, direct to the
upstream and through the gateway, measured in the same run.

    sse_probe.py --direct 127.0.0.1:18081 --gateway 127.0.0.1:18080 -n 200

Requests go one at a time, alternating direct and gateway (one persistent
connection to each), so both see the same machine state.  For every request
it records, from the instant before send():

    ttfb   the arrival of the first complete ``data:`` event
    gaps   the time between consecutive complete events

and reports p50/p99 of each per target plus the gateway's added figures:

    added TTFB    p50(gateway) - p50(direct), same for p99
    gap deltas    quantiles of gateway gaps minus the same quantiles of
                  direct gaps; and the paired delta (gap k of gateway
                  request i minus gap k of direct request i), p50 and p99
                  of its absolute value

Prints a human summary on stderr and, with --json-out, one JSON line.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rawhttp import Connection, ProtocolError, parse_hostport, percentile  # noqa: E402

BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "Count to twenty."}],
    }
).encode()
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
    "Authorization": "Bearer sk-bench-not-a-real-key",
}


class Sample:
    def __init__(self) -> None:
        self.ttfb_ms: float | None = None
        self.gaps_ms: list[float] = []
        self.events = 0
        self.done = False
        self.status = 0
        self.total_ms = 0.0
        self.error: str | None = None


def one(conn: Connection, path: str) -> Sample:
    sample = Sample()
    buf = bytearray()
    times: list[int] = []
    marks = {"done": False}

    def on_data(piece: bytes, t_ns: int) -> bool:
        buf.extend(piece.replace(b"\r\n", b"\n"))
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            event = bytes(buf[:end])
            del buf[: end + 2]
            if any(line.startswith(b"data:") for line in event.split(b"\n")):
                times.append(t_ns)
                if b"[DONE]" in event:
                    marks["done"] = True
        return True

    try:
        response = conn.request("POST", path, HEADERS, BODY, on_data)
    except (OSError, ProtocolError) as error:
        conn.close()
        sample.error = f"{type(error).__name__}: {error}"
        return sample
    sample.status = response.status
    sample.events = len(times)
    sample.done = marks["done"] and response.complete
    sample.total_ms = (response.end_ns - response.sent_ns) / 1e6
    if times:
        sample.ttfb_ms = (times[0] - response.sent_ns) / 1e6
        sample.gaps_ms = [(b - a) / 1e6 for a, b in zip(times, times[1:])]
    if response.status != 200:
        sample.error = f"HTTP {response.status}"
    elif not sample.done:
        sample.error = "stream ended without [DONE] or was cut short"
    return sample


def summarise(samples: list[Sample], expect_events: int) -> dict:
    good = [s for s in samples if s.error is None and s.ttfb_ms is not None]
    ttfb = [s.ttfb_ms for s in good]
    gaps = [g for s in good for g in s.gaps_ms]
    bad_count = [s for s in good if expect_events and s.events != expect_events]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    out = {
        "requests": len(samples),
        "ok": len(good),
        "errors": errors,
        "wrong_event_count": len(bad_count),
    }
    if good:
        out.update(
            ttfb_p50_ms=percentile(ttfb, 50),
            ttfb_p99_ms=percentile(ttfb, 99),
            gap_p1_ms=percentile(gaps, 1),
            gap_p50_ms=percentile(gaps, 50),
            gap_p99_ms=percentile(gaps, 99),
            gap_max_ms=max(gaps) if gaps else float("nan"),
            total_p50_ms=percentile([s.total_ms for s in good], 50),
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="SSE TTFB and gap probe")
    parser.add_argument("--direct", required=True, help="HOST:PORT of the upstream")
    parser.add_argument("--gateway", required=True, help="HOST:PORT of the gateway")
    parser.add_argument("--path", default="/v1/stream")
    parser.add_argument("-n", type=int, default=200, help="requests per target")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests per target")
    parser.add_argument(
        "--expect-events", type=int, default=21, help="data: events per stream (0: any)"
    )
    parser.add_argument("--max-seconds", type=float, default=150.0, help="hard time limit")
    parser.add_argument("--json-out", help="append one JSON line here")
    parser.add_argument(
        "--case", default="sse", help='the JSON line\'s "case" (sse_floor: another relay in its place)'
    )
    args = parser.parse_args()

    targets = {"direct": parse_hostport(args.direct), "gateway": parse_hostport(args.gateway)}
    conns = {name: Connection(*addr, timeout=10.0) for name, addr in targets.items()}
    samples: dict[str, list[Sample]] = {name: [] for name in targets}
    deadline = time.monotonic() + args.max_seconds
    timed_out = False

    for _ in range(args.warmup):
        for name in targets:
            one(conns[name], args.path)
    for i in range(args.n):
        if time.monotonic() > deadline:
            timed_out = True
            break
        # Alternate which goes first, so neither always follows the other.
        order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
        for name in order:
            samples[name].append(one(conns[name], args.path))
    for conn in conns.values():
        conn.close()

    result: dict = {"case": args.case, "n": args.n, "timed_out": timed_out}
    for name in targets:
        result[name] = summarise(samples[name], args.expect_events)
        result[name]["connects"] = conns[name].connects
    d, g = result["direct"], result["gateway"]
    if "ttfb_p50_ms" in d and "ttfb_p50_ms" in g:
        result["added_ttfb_p50_ms"] = g["ttfb_p50_ms"] - d["ttfb_p50_ms"]
        result["added_ttfb_p99_ms"] = g["ttfb_p99_ms"] - d["ttfb_p99_ms"]
        result["gap_delta_p50_ms"] = g["gap_p50_ms"] - d["gap_p50_ms"]
        result["gap_delta_p99_ms"] = g["gap_p99_ms"] - d["gap_p99_ms"]
        paired = []
        for sd, sg in zip(samples["direct"], samples["gateway"]):
            if sd.error is None and sg.error is None:
                paired.extend(abs(b - a) for a, b in zip(sd.gaps_ms, sg.gaps_ms))
        if paired:
            result["paired_gap_absdelta_p50_ms"] = percentile(paired, 50)
            result["paired_gap_absdelta_p99_ms"] = percentile(paired, 99)

    def fmt(value: object) -> str:
        return f"{value:8.3f}" if isinstance(value, float) else f"{value!s:>8}"

    print(f"sse_probe: {args.n} requests per target, path {args.path}", file=sys.stderr)
    for name in targets:
        r = result[name]
        print(
            f"  {name:8} ok {r['ok']}/{r['requests']}  ttfb p50 {fmt(r.get('ttfb_p50_ms'))} ms"
            f"  p99 {fmt(r.get('ttfb_p99_ms'))} ms  gap p50 {fmt(r.get('gap_p50_ms'))} ms"
            f"  p99 {fmt(r.get('gap_p99_ms'))} ms  max {fmt(r.get('gap_max_ms'))} ms"
            f"  errors {r['errors'] or '-'}",
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
