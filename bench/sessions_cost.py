#!/usr/bin/env python3
"""
Session detection cost per call, with the in-memory store.

Conversations of 10 and 200 turns (an OpenAI chat agent: system prompt,
user turns of ~150 characters, answers of ~600, every fifth answer a tool
call with its result); bodies already parsed, as the gateway has them.  For
every call of every conversation it times, in microseconds:

- ``detector``: ``SessionDetector.begin`` + ``complete`` (the history given,
  as ``history_of`` made it);
- ``history+detector``: ``history_of`` + ``begin`` + ``complete``;
- ``stage``: the whole ``SessionStage`` path, ``request_received`` +
  ``exchange_finished`` (the answer read from the response body).

Each round replays ``--conversations`` interleaved conversations in a store
already holding ``--background`` sessions; a figure is the median over the
rounds of the round's median, over all calls or over the late calls (the
last tenth of the turns: the longest histories).  The best round is shown
too.  Times are this process's CPU time (``time.process_time_ns``), so
that other processes on a shared machine do not count; on an idle machine
they equal wall-clock time, as the work is CPU-bound and single-threaded.

    .venv/bin/python bench/sessions_cost.py [--rounds 5] [--conversations 20]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from llmgate.config import SessionConfig  # noqa: E402
from llmgate.exchange import Exchange, RequestRecord, ResponseRecord  # noqa: E402
from llmgate.sessions.canonical import history_of  # noqa: E402
from llmgate.sessions.detect import SessionDetector  # noqa: E402
from llmgate.sessions.memory import MemorySessionStore  # noqa: E402
from llmgate.sessions.stage import SessionStage  # noqa: E402

TARGET_US = 100.0
PATH = b"/v1/chat/completions"
WORDS = "the quick brown fox jumps over a lazy dog while parsing json bodies in the gateway".split()


def text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


class Agent:
    """
    One conversation: the parsed body of each call, and each call's answer.
    """

    def __init__(self, rng: random.Random, number: int) -> None:
        self.rng = rng
        self.number = number
        self.messages: list[Any] = [
            {"role": "system", "content": "You are a coding agent. " + text(rng, 400)},
            {"role": "user", "content": f"task {number}: " + text(rng, 150)},
        ]
        self.turn = 0

    def call(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """
        The next body (a fresh list, as a parsed request is) and its answer.
        """
        body = {"model": "gpt-x", "messages": list(self.messages)}
        self.turn += 1
        if self.turn % 5 == 0:
            answer = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{self.number}_{self.turn}",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": json.dumps({"path": text(self.rng, 30)})},
                    }
                ],
            }
            follow: Any = {"role": "tool", "tool_call_id": f"call_{self.number}_{self.turn}", "content": text(self.rng, 300)}
        else:
            answer = {"role": "assistant", "content": f"answer {self.number}.{self.turn} " + text(self.rng, 600)}
            follow = {"role": "user", "content": text(self.rng, 150)}
        self.messages += [answer, follow]
        return body, answer


def completion(answer: dict[str, Any]) -> bytes:
    return json.dumps(
        {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}]}
    ).encode()


def prepare(turns: int, conversations: int, seed: int) -> list[list[tuple[dict[str, Any], dict[str, Any]]]]:
    rng = random.Random(seed)
    agents = [Agent(rng, n) for n in range(conversations)]
    return [[agent.call() for _ in range(turns)] for agent in agents]


def fresh(background: int) -> tuple[SessionDetector, SessionStage]:
    """
    A detector (and its stage) over a store already holding ``background``
    two-turn sessions.
    """
    store = MemorySessionStore(Clock(), max_sessions=max(10_000, background + 1000))
    detector = SessionDetector(store, SessionConfig())
    rng = random.Random(1)
    for n in range(background):
        body = {"model": "m", "messages": [{"role": "user", "content": f"bg {n} " + text(rng, 40)}]}
        pending, _ = detector.begin(history_of("openai", PATH, body))
        detector.complete(pending, {"role": "assistant", "content": f"bg answer {n}"})
    return detector, SessionStage(detector)


def measure(
    name: str,
    turns: int,
    plan: list[list[tuple[dict[str, Any], dict[str, Any]]]],
    background: int,
    one_call: Callable[[SessionDetector, SessionStage, dict[str, Any], dict[str, Any], bytes], int],
) -> tuple[list[float], list[float]]:
    """
    Per-call microseconds of ``one_call`` over the conversations of ``plan``,
    interleaved turn by turn: (all calls, late calls).
    """
    detector, stage = fresh(background)
    everything: list[float] = []
    last: list[float] = []
    bodies = [[completion(answer) for _, answer in calls] for calls in plan]
    gc.collect()
    gc.disable()
    try:
        for turn in range(turns):
            for calls, answers in zip(plan, bodies):
                body, answer = calls[turn]
                ns = one_call(detector, stage, body, answer, answers[turn])
                everything.append(ns / 1000)
                if turn >= turns - max(1, turns // 10):
                    last.append(ns / 1000)
    finally:
        gc.enable()
    hits = detector.counts["cache_hits"]
    misses = detector.counts["cache_misses"] - background
    assert misses == len(plan) and hits == len(plan) * (turns - 1), (name, dict(detector.counts))
    return everything, last


def detector_only(detector: SessionDetector, stage: SessionStage, body: Any, answer: Any, raw: bytes) -> int:
    history = history_of("openai", PATH, body)
    clock = time.process_time_ns
    start = clock()
    pending, _ = detector.begin(history)
    detector.complete(pending, answer)
    return clock() - start


def with_history(detector: SessionDetector, stage: SessionStage, body: Any, answer: Any, raw: bytes) -> int:
    clock = time.process_time_ns
    start = clock()
    pending, _ = detector.begin(history_of("openai", PATH, body))
    detector.complete(pending, answer)
    return clock() - start


def whole_stage(detector: SessionDetector, stage: SessionStage, body: Any, answer: Any, raw: bytes) -> int:
    exchange = Exchange(
        id="x",
        provider="openai",
        request=RequestRecord(method=b"POST", uri=PATH, headers=Headers(), body=b"{}"),
        received=0.0,
    )
    exchange._json = body  # the body already parsed, as the gateway has it
    exchange.response = ResponseRecord(status=200, headers=[], body=bytearray(raw))
    clock = time.process_time_ns
    start = clock()
    stage.request_received(exchange)
    stage.exchange_finished(exchange)
    return clock() - start


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--background", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds x {args.conversations} conversations, "
          f"store holding {args.background} other sessions; microseconds per call\n")
    print("| turns | messages at the last call | path | median, all calls | median, late calls | p90, late calls | best round, late calls |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    worst = 0.0
    for turns in (10, 200):
        plan = prepare(turns, args.conversations, seed=turns)
        for name, one_call in (
            ("detector (begin + complete)", detector_only),
            ("history_of + detector", with_history),
            ("SessionStage (request_received + exchange_finished)", whole_stage),
        ):
            rounds_all: list[float] = []
            rounds_last: list[float] = []
            p90s: list[float] = []
            for _ in range(args.rounds):
                everything, last = measure(name, turns, plan, args.background, one_call)
                rounds_all.append(statistics.median(everything))
                rounds_last.append(statistics.median(last))
                p90s.append(statistics.quantiles(last, n=10)[-1])
            median_all = statistics.median(rounds_all)
            median_last = statistics.median(rounds_last)
            if name.startswith("detector"):
                worst = max(worst, median_last)
            messages = len(plan[0][-1][0]["messages"])
            print(
                f"| {turns} | {messages} | {name} | {median_all:.1f} | {median_last:.1f} "
                f"| {statistics.median(p90s):.1f} | {min(rounds_last):.1f} |"
            )
    verdict = "meets" if worst <= TARGET_US else "MISSES"
    print(f"\ndetector (begin + complete) on the longest histories: {worst:.1f} us per call (median): "
          f"{verdict} the {TARGET_US:.0f} us target")


if __name__ == "__main__":
    main(sys.argv[1:])
