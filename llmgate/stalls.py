"""
What stalls the reactor thread, measured where it happens: each garbage
collection's pause (through ``gc.callbacks``) and how late a periodic timer
fires (the loop's lag: any synchronous work, a thread holding the GIL, a
page fault).  Both are histograms in ``/metrics``, so an operator sees a
tail-latency problem's cause as well as its effect.

Cheap by design: a collection costs two ``perf_counter`` calls more, and
the timer fires 20 times a second.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from llmgate.metrics import Buckets

#: Bounds for both histograms, in seconds: a stall under 0.5 ms is noise,
#: one over 100 ms is an outage.
STALL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

#: How often the lag probe fires, in seconds.
LAG_INTERVAL = 0.05


class StallWatch:
    """
    Garbage-collector pauses by generation, and the reactor's loop lag.

    :ivar gc_pauses: generation (0, 1, 2) to :class:`Buckets` of pauses.
    :ivar loop_lag: :class:`Buckets` of how late the probe timer fired.
    :ivar worst: the longest stall of either kind since start, in seconds,
        and what it was (``gc2``, ``loop``).
    """

    def __init__(self, clock: IReactorTime, interval: float = LAG_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self.gc_pauses = {generation: Buckets(STALL_BUCKETS) for generation in (0, 1, 2)}
        self.loop_lag = Buckets(STALL_BUCKETS)
        self.worst: tuple[float, str] = (0.0, "")
        self._gc_started = 0.0
        self._due = 0.0
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        self._arm()

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- gc ----------------------------------------------------------------------

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        if not self._gc_started:
            return
        pause = time.perf_counter() - self._gc_started
        self._gc_started = 0.0
        generation = info.get("generation", 2)
        self.gc_pauses[generation].observe(pause)
        if pause > self.worst[0]:
            self.worst = (pause, f"gc{generation}")

    # -- loop lag ------------------------------------------------------------------

    def _arm(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._timer = self.clock.callLater(self.interval, self._fired)

    def _fired(self) -> None:
        lag = max(0.0, self.clock.seconds() - self._due)
        self.loop_lag.observe(lag)
        if lag > self.worst[0]:
            self.worst = (lag, "loop")
        self._arm()

    def view(self) -> dict[str, Any]:
        """
        The JSON view: counts and the worst stall, in milliseconds.
        """
        return {
            "gc_collections": {
                str(generation): sum(buckets.counts)
                for generation, buckets in self.gc_pauses.items()
            },
            "gc_pause_ms_total": round(
                sum(b.total for b in self.gc_pauses.values()) * 1000, 3
            ),
            "loop_lag_over_5ms": sum(self.loop_lag.counts[STALL_BUCKETS.index(0.005) + 1 :]),
            "worst_ms": round(self.worst[0] * 1000, 3),
            "worst_kind": self.worst[1],
        }
