"""
Limits an operator meets: the open-files limit, raised at start, and the
concurrency cap, whose refusals are reported in the log.
"""

from __future__ import annotations

import resource
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: Descriptors a gateway holds besides its calls: listening sockets, the
#: log and trace files, the console, Python's own.
_SPARE_DESCRIPTORS = 64


@attrs.frozen
class OpenFiles:
    before: int
    soft: int
    hard: int


def raise_open_files_limit(rlimit: Any = resource) -> OpenFiles:
    """
    Raise the soft ``RLIMIT_NOFILE`` to the hard limit, as Go's runtime and
    nginx's ``worker_rlimit_nofile`` do: the soft default (often 1,024)
    runs out before ``server.max_concurrent`` calls, each of which holds a
    client and an upstream socket.

    :param rlimit: the ``resource`` module (a fake in tests).
    """
    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    before = soft
    if hard != rlimit.RLIM_INFINITY and soft != rlimit.RLIM_INFINITY and soft < hard:
        try:
            rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return OpenFiles(before=before, soft=soft, hard=hard)


def descriptors_needed(max_concurrent: int, max_idle_connections: int) -> int:
    """
    Open files a gateway may need at its concurrency cap: two sockets per
    call, the idle upstream connections, and some to spare.
    """
    return 2 * max_concurrent + max_idle_connections + _SPARE_DESCRIPTORS


def log_open_files(
    limits: OpenFiles, max_concurrent: int, max_idle_connections: int, log: Logger
) -> None:
    """
    Say at start what the open-files limit is, and warn when it is below
    what the concurrency cap needs.
    """
    needed = descriptors_needed(max_concurrent, max_idle_connections)
    if max_concurrent and limits.soft != resource.RLIM_INFINITY and limits.soft < needed:
        log.warn(
            "open files limit {soft} is below the {needed} that server.max_concurrent "
            "({max_concurrent}) may need: calls beyond it fail to connect; raise the "
            "hard limit (LimitNOFILE= in the unit, ulimit -Hn) or lower max_concurrent",
            soft=limits.soft,
            needed=needed,
            max_concurrent=max_concurrent,
        )
    elif limits.soft != limits.before:
        log.info(
            "open files limit raised from {before} to {soft} (the hard limit)",
            before=limits.before,
            soft=limits.soft,
        )


class OncePerInterval:
    """
    When a repeated event is worth a log line: the first of each key at
    once, later ones at most once an ``interval``, with how many happened
    since the last line.  Many failures must not flood the log.
    """

    def __init__(self, clock: IReactorTime, interval: float = 60.0) -> None:
        self.clock = clock
        self.interval = interval
        #: By key: (time of its last line, events since).
        self._keys: dict[object, tuple[float, int]] = {}

    def due(self, key: object = None) -> tuple[int, float] | None:
        """
        Count one event of ``key``.

        :return: None to stay quiet; else the events since the last line
            (this one included; 0 for the first ever) and the seconds since.
        """
        now = self.clock.seconds()
        last = self._keys.get(key)
        if last is None:
            self._keys[key] = (now, 0)
            return (0, 0.0)
        since, count = last[0], last[1] + 1
        if now - since < self.interval:
            self._keys[key] = (since, count)
            return None
        self._keys[key] = (now, 0)
        return (count, now - since)


class RefusalReport:
    """
    While calls are refused at ``server.max_concurrent``, one log line a
    minute says so (the first at once), with how many were refused since
    the last line: an operator learns of the cap without a line per call.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, limit: int) -> None:
        self.limit = limit
        self._due = OncePerInterval(clock)

    def refused(self) -> None:
        due = self._due.due()
        if due is None:
            return
        count, seconds = due
        if not count:
            self.log.warn(
                "server.max_concurrent ({limit}) reached: refusing calls with 503 "
                "(counted here once a minute while it lasts)",
                limit=self.limit,
            )
        else:
            self.log.warn(
                "server.max_concurrent ({limit}) reached: {count} call(s) refused with 503 "
                "in the last {seconds:.0f} s",
                limit=self.limit,
                count=count,
                seconds=seconds,
            )
