#!/usr/bin/env python3
"""
Light background traffic for the SSE "warm" case: one small chat call every
``--interval`` seconds on one keep-alive connection, until ``--seconds``
pass or the process is stopped.  It keeps the gateway from sitting idle
between the probe's streams, as any gateway with other users would be.

    background.py --target 127.0.0.1:18080 --interval 0.002 --seconds 200

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

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-not-a-real-key"}


def main() -> int:
    parser = argparse.ArgumentParser(description="light background calls")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--interval", type=float, default=0.002, help="seconds between calls")
    parser.add_argument("--seconds", type=float, default=200.0, help="hard time limit")
    args = parser.parse_args()
    connection = Connection(*parse_hostport(args.target), timeout=10.0)
    deadline = time.monotonic() + args.seconds
    calls = errors = 0
    while time.monotonic() < deadline:
        try:
            connection.request("POST", args.path, HEADERS, BODY, lambda piece, t: True)
            calls += 1
        except (OSError, ProtocolError):
            errors += 1
            connection.close()
        time.sleep(args.interval)
    print(f"background: {calls} calls, {errors} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
