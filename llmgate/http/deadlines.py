"""
Many timeouts of one length on one timer.

Every call the gateway forwards waits at most ``llm.timeout`` for the head
of its answer.  A ``DelayedCall`` per call would cost the reactor a heap
insertion and a cancellation for each of them, though nearly all answer in
time.  The timeouts all have the same length, so their deadlines come in the
order they were set: the earliest is always the oldest one still waiting,
and one timer, armed for it, serves them all.  Setting and clearing a
deadline is then one dict operation.

Implements the timeout of RFC 9110 section 15.6.5 (504: no answer's head in
``llm.timeout``); the rest is bookkeeping.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """
    Deadlines ``seconds`` after each :meth:`start`; ``expired(key)`` is
    called for a key whose deadline passed before :meth:`stop`.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, seconds: float, expired: Callable[[K], object]
    ) -> None:
        self._clock = clock
        self._seconds = seconds
        self._expired = expired
        #: Waiting keys and their deadlines, oldest (and so earliest) first.
        self._waiting: dict[K, float] = {}
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def start(self, key: K) -> None:
        """
        Start ``key``'s deadline.
        """
        self._waiting[key] = self._clock.seconds() + self._seconds
        if self._timer is None:
            self._timer = self._clock.callLater(self._seconds, self._fire)

    def stop(self, key: K) -> None:
        """
        ``key`` no longer waits; nothing happens if it was not waiting.
        """
        self._waiting.pop(key, None)

    def close(self) -> None:
        """
        Forget every deadline and stop the timer.
        """
        self._waiting.clear()
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fire(self) -> None:
        self._timer = None
        waiting = self._waiting
        now = self._clock.seconds()
        while waiting:
            key = next(iter(waiting))
            deadline = waiting[key]
            if deadline > now:
                self._timer = self._clock.callLater(deadline - now, self._fire)
                return
            del waiting[key]
            try:
                self._expired(key)
            except Exception:
                self.log.failure("a deadline's expiry failed")
