#!/usr/bin/env python3
"""
What a call's session bookkeeping costs with the Redis session store
compared with the in-memory one: ``SessionDetector.begin`` (find + touch)
then ``complete`` (remember) for a call that continues its conversation,
with 10- and 200-message histories (system prompt included), one call at a
time; median and 90th percentile wall time per call, and the median of
``begin`` alone (what delays the request: ``complete``'s remember runs
after the answer), in microseconds.

    .venv/bin/python bench/sessions_redis_cost.py [--calls N] [--url redis://127.0.0.1:PORT/0]

Without ``--url`` a private ``redis-server`` is started on 127.0.0.1 (see
tests/redisserver.py) and stopped at the end.  The Redis figure is mostly
three loopback round trips; it is what a gateway pays per call for sharing
sessions between processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402

from llmgate.config import SessionConfig  # noqa: E402
from llmgate.sessions.canonical import history_of  # noqa: E402
from llmgate.sessions.detect import CONTINUED, SessionDetector  # noqa: E402
from llmgate.sessions.memory import MemorySessionStore  # noqa: E402
from llmgate.sessions.redis import RedisSessionStore  # noqa: E402

LENGTHS = (10, 200)
WARMUP = 50


async def maybe(value: Any) -> Any:
    if isinstance(value, Deferred):
        return await value
    return value


def conversation(number: int, length: int) -> tuple[Any, Any, Any, Any]:
    """
    ``length`` messages (system prompt included) ending with a user turn:
    the previous call's history and answer (to set up the state), and this
    call's history and answer.
    """
    messages: list[dict[str, str]] = []
    for i in range(length - 1):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"conversation {number}, message {i}: " + "words " * 20})
    system = {"role": "system", "content": "You are a helpful assistant."}

    def history(items: list[dict[str, str]]) -> Any:
        return history_of("openai", b"/v1/chat/completions", {"model": "m", "messages": [system, *items]})

    return (
        history(messages[:-2]),
        messages[-2],
        history(messages),
        {"role": "assistant", "content": f"answer to conversation {number}"},
    )


async def measure(store: Any, length: int, calls: int) -> tuple[list[float], list[float]]:
    detector = SessionDetector(store, SessionConfig())
    cases = [conversation(n, length) for n in range(calls + WARMUP)]
    for previous, answer, _, _ in cases:
        pending, decided = detector.begin(previous)
        await maybe(decided)
        await maybe(detector.complete(pending, answer))
    timings, begins = [], []
    for n, (_, _, history, answer) in enumerate(cases):
        start = time.perf_counter()
        pending, decided = detector.begin(history)
        decision = await maybe(decided)
        decided_at = time.perf_counter()
        await maybe(detector.complete(pending, answer))
        elapsed = time.perf_counter() - start
        if decision.how != CONTINUED:
            raise RuntimeError(f"call {n} was {decision.how}, not continued")
        if n >= WARMUP:
            timings.append(elapsed * 1e6)
            begins.append((decided_at - start) * 1e6)
    return timings, begins


async def main(reactor: Any, options: argparse.Namespace) -> None:
    server = None
    url = options.url
    if url is None:
        from tests.redisserver import RedisServer

        try:
            server = RedisServer()
        except BaseException as skipped:  # pytest.skip outside pytest
            raise SystemExit(str(skipped)) from None
        server.start()
        url = server.url
    try:
        rows = []
        for length in LENGTHS:
            for kind in ("memory", "redis"):
                if kind == "memory":
                    store: Any = MemorySessionStore(reactor)
                else:
                    store = RedisSessionStore(reactor, url, key_prefix=f"bench:{os.getpid()}:{length}:")
                    if not await store.connect():
                        raise SystemExit(f"no Redis answers at {url}")
                timings, begins = await measure(store, length, options.calls)
                if kind == "redis":
                    if store.fallbacks:
                        raise SystemExit("Redis went away during the run: figures are not Redis's")
                    await store.close()
                timings.sort()
                rows.append(
                    (kind, length, statistics.median(timings), timings[int(len(timings) * 0.9)], statistics.median(begins))
                )
        print(f"{'store':<8} {'history':>8} {'calls':>6} {'median µs':>10} {'p90 µs':>8} {'begin µs':>9}")
        for kind, length, median, p90, begin in rows:
            print(f"{kind:<8} {length:>8} {options.calls:>6} {median:>10.0f} {p90:>8.0f} {begin:>9.0f}")
        for length in LENGTHS:
            memory, redis = (row[2] for row in rows if row[1] == length)
            print(f"{length}-message history: Redis adds {redis - memory:.0f} µs per call ({redis / memory:.1f}x)")
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per case (default 2000)")
    parser.add_argument("--url", help="an existing Redis (default: start a private redis-server)")
    options = parser.parse_args()
    task.react(lambda reactor: ensureDeferred(main(reactor, options)))
