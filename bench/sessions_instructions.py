#!/usr/bin/env python3
"""
Session detection's cost per call in CPU instructions, counted by
valgrind's callgrind: the same figure whatever else the machine is doing,
so two versions of the code compare on a shared machine where timings
drift by a factor of two.

    bash -c 'valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/sessions_instructions.py --calls N' 2>&1 | grep refs

Run it with ``--calls 0`` and with ``--calls N``: the difference divided by
the calls is the instructions per call of the whole ``SessionStage`` path
(``request_received`` + ``exchange_finished``, 10-turn conversations, a
store holding 2,000 other sessions).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import sessions_cost  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    conversations = sessions_cost.prepare(10, 20, 7)
    detector, stage = sessions_cost.fresh(2000)
    calls = [
        (body, answer, sessions_cost.completion(answer))
        for turn in range(10)
        for conversation in conversations
        for body, answer in [conversation[turn]]
    ][: args.calls]
    for body, answer, raw in calls:
        sessions_cost.whole_stage(detector, stage, body, answer, raw)


if __name__ == "__main__":
    main()
