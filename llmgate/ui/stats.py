"""
Calls, tokens and latency per minute, for the charts of the sessions page.
"""

from __future__ import annotations

import math
import random
from typing import Any

from llmgate.ui.summary import CallSummary

#: Minutes kept; the page shows the last 60.
KEEP_MINUTES = 120
#: Latencies kept per minute at most (a uniform sample beyond).
SAMPLE = 2000


class _Minute:
    __slots__ = ("calls", "tokens_in", "tokens_out", "errors", "latencies", "seen")

    def __init__(self) -> None:
        self.calls = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.seen = 0


class MinuteStats:
    """
    Per-minute counts of the calls indexed, keyed by the minute of each
    call's own time (so files from other processes land in the right
    minute).  Latency percentiles come from a bounded sample per minute.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.minutes: dict[int, _Minute] = {}
        self.newest = 0
        self._random = (rng or random.Random(0)).random

    def add(self, call: CallSummary) -> None:
        minute = int(call.time // 60)
        if minute <= self.newest - KEEP_MINUTES:
            return
        bucket = self.minutes.get(minute)
        if bucket is None:
            bucket = self.minutes[minute] = _Minute()
            if minute > self.newest:
                self.newest = minute
                for old in [m for m in self.minutes if m <= minute - KEEP_MINUTES]:
                    del self.minutes[old]
        bucket.calls += 1
        bucket.tokens_in += call.tokens_in
        bucket.tokens_out += call.tokens_out
        if call.failed:
            bucket.errors += 1
        latency = call.duration_ms
        if latency is not None:
            bucket.seen += 1
            if len(bucket.latencies) < SAMPLE:
                bucket.latencies.append(latency)
            else:  # a uniform sample (reservoir)
                slot = int(self._random() * bucket.seen)
                if slot < SAMPLE:
                    bucket.latencies[slot] = latency

    def last_hour(self, now: float) -> dict[str, Any]:
        """
        Sixty minutes up to ``now``: ``minutes`` (epoch seconds of each
        minute's start), ``calls``, ``tokens_in``, ``tokens_out``,
        ``errors``, and latency ``p50``/``p90``/``p99`` in ms (None for a
        minute without calls).
        """
        end = int(now // 60)
        result: dict[str, list[Any]] = {
            key: [] for key in ("minutes", "calls", "tokens_in", "tokens_out", "errors", "p50", "p90", "p99")
        }
        for minute in range(end - 59, end + 1):
            bucket = self.minutes.get(minute)
            result["minutes"].append(minute * 60)
            result["calls"].append(bucket.calls if bucket else 0)
            result["tokens_in"].append(bucket.tokens_in if bucket else 0)
            result["tokens_out"].append(bucket.tokens_out if bucket else 0)
            result["errors"].append(bucket.errors if bucket else 0)
            ordered = sorted(bucket.latencies) if bucket else []
            for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
                result[name].append(_percentile(ordered, share))
        return result


def _percentile(ordered: list[float], share: float) -> float | None:
    if not ordered:
        return None
    # nearest rank
    index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return round(ordered[index], 3)
