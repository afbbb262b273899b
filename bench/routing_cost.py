#!/usr/bin/env python3
"""
What routing costs per call, in process: the route table of bench/routing.sh
(one catch-all route, or ten with the call matching only the last), the
call's API shape looked up from its path, the model read from the small chat
body.  Process CPU time, best of several rounds (other loads only add).

    .venv/bin/python bench/routing_cost.py [--calls N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.web.http_headers import Headers  # noqa: E402

from llmgate.config import parse  # noqa: E402
from llmgate.providers.registry import Shapes  # noqa: E402
from llmgate.routing import Router, model_key  # noqa: E402

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
PATH = b"/v1/chat/completions"
TEN = [
    {"path": "/v1/messages", "upstream": "o"},
    {"model": "claude-*", "upstream": "o"},
    {"model": "llama-*", "upstream": "o"},
    {"path": "/v1/embeddings", "upstream": "o"},
    {"header": {"x-tenant": "beta"}, "upstream": "o"},
    {"model": "gemini-*", "upstream": "o"},
    {"path": "/v1/responses", "upstream": "o"},
    {"model": "mistral-*", "upstream": "o"},
    {"model": "*-preview", "upstream": "o"},
    {"upstream": "up"},
]


def per_call(router: Router, shapes: Shapes, headers: Headers, calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            shapes.for_path(PATH)
            router.match(PATH, headers, lambda: model_key(BODY))
        best = min(best, (time.process_time() - start) / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    upstreams = {"up": {}, "o": {}}
    one = Router(parse({"upstreams": upstreams, "routes": [{"upstream": "up"}]}).routes)
    ten = Router(parse({"upstreams": upstreams, "routes": TEN}).routes)
    headers = Headers(
        {b"content-type": [b"application/json"], b"authorization": [b"Bearer sk-bench"]}
    )
    shapes = Shapes()
    a = per_call(one, shapes, headers, args.calls, args.rounds)
    b = per_call(ten, shapes, headers, args.calls, args.rounds)
    print("| routes | CPU per call (us) |")
    print("|---|---:|")
    print(f"| 1 | {a:.2f} |")
    print(f"| 10 | {b:.2f} |")
    print(f"| 10 minus 1 | {b - a:+.2f} |")


if __name__ == "__main__":
    main()
