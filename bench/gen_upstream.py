#!/usr/bin/env python3
"""
Write the benchmark upstream into a directory: nginx.conf (from
bench/nginx.conf.template) and the static answers it serves.

    gen_upstream.py --dir DIR --port PORT [--events 20] [--gap-ms 10] [--big-mb 400]

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "gpt-4o-mini-2024-07-18"

CHAT_COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I help you today?",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
    "system_fingerprint": "fp_bench",
}


def chunk(index: int, total: int) -> dict:
    """The ``index``-th of ``total`` chat.completion.chunk events."""
    delta: dict = {"content": f"tok{index} "}
    if index == 0:
        delta = {"role": "assistant", "content": ""}
    last = index == total - 1
    return {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "delta": {} if last else delta,
                "logprobs": None,
                "finish_reason": "stop" if last else None,
            }
        ],
    }


def sse_line(document: dict) -> str:
    return "data: " + json.dumps(document, separators=(",", ":"))


def stream_body(events: int, gap_ms: int) -> str:
    """echo-module directives: one event per flush, ``gap_ms`` between events."""
    lines = []
    for i in range(events):
        data = sse_line(chunk(i, events))
        assert "'" not in data and "$" not in data and "\\" not in data
        lines.append(f"            echo '{data}';")
        lines.append("            echo;")
        lines.append("            echo_flush;")
        # After every event, the last included: [DONE] also comes one gap
        # later, so every inter-event gap is nominally gap_ms.
        lines.append(f"            echo_sleep {gap_ms / 1000:.3f};")
    lines.append("            echo 'data: [DONE]';")
    lines.append("            echo;")
    return "\n".join(lines)


def write_big_stream(path: str, megabytes: int) -> tuple[int, int]:
    """
    A static SSE stream of realistic chat.completion.chunk events, about
    ``megabytes`` MiB long, ending with ``data: [DONE]``.  Returns
    (bytes, events).
    """
    target = megabytes * 1024 * 1024
    block_events = 1000
    block = "".join(
        sse_line(chunk(1 + (i % 7), 10)) + "\n\n" for i in range(block_events)
    ).encode()
    done = b"data: [DONE]\n\n"
    size = events = 0
    with open(path, "wb") as out:
        while size + len(block) + len(done) <= target:
            out.write(block)
            size += len(block)
            events += block_events
        out.write(done)
        size += len(done)
        events += 1
    return size, events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--gap-ms", type=int, default=10)
    parser.add_argument("--big-mb", type=int, default=400)
    parser.add_argument(
        "--echo-module", default="/usr/lib/nginx/modules/ngx_http_echo_module.so"
    )
    parser.add_argument("--template", default=os.path.join(HERE, "nginx.conf.template"))
    args = parser.parse_args()

    root = os.path.abspath(args.dir)
    www = os.path.join(root, "www", "v1", "chat")
    os.makedirs(www, exist_ok=True)
    for name in ("tmp-body", "tmp-proxy", "tmp-fastcgi", "tmp-uwsgi", "tmp-scgi"):
        os.makedirs(os.path.join(root, name), exist_ok=True)

    completion = json.dumps(CHAT_COMPLETION, separators=(",", ":"))
    assert "'" not in completion and "$" not in completion and "\\" not in completion
    with open(os.path.join(www, "completions"), "w") as out:
        out.write(completion)
    big_bytes, big_events = write_big_stream(
        os.path.join(root, "www", "v1", "big-stream"), args.big_mb
    )

    with open(args.template) as template:
        conf = template.read()
    for key, value in {
        "@@DIR@@": root,
        "@@PORT@@": str(args.port),
        "@@CHAT_COMPLETION@@": completion,
        "@@ECHO_MODULE@@": args.echo_module,
        "@@EVENTS@@": str(args.events),
        "@@GAP_MS@@": str(args.gap_ms),
        "@@STREAM_BODY@@": stream_body(args.events, args.gap_ms),
    }.items():
        conf = conf.replace(key, value)
    if re.search(r"@@[A-Z_]+@@", conf):
        print("gen_upstream: unfilled placeholder in template", file=sys.stderr)
        return 1
    with open(os.path.join(root, "nginx.conf"), "w") as out:
        out.write(conf)
    print(
        json.dumps(
            {
                "big_stream_bytes": big_bytes,
                "big_stream_events": big_events,
                "stream_events": args.events,
                "stream_gap_ms": args.gap_ms,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
