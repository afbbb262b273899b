"""
Log output for the daemon: level and format from the configuration, through
``twisted.logger`` so every event keeps its fields (the JSON format writes
them all).

Lines are formatted on the reactor thread, cheaply (format strings parsed
once, the timestamp once a second), and written in batches by one writer
thread (at most every GATHER_SECONDS) from a bounded buffer, so a slow disk or a blocked stdout pipe never stalls the
gateway: past the bound, lines are dropped and the drop is written in their
place.  :meth:`LogWriter.flush` (also run at exit) writes what is pending.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections import deque
from string import Formatter
from typing import IO, Any, Callable

from twisted.logger import (
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

from llmgate.config import LoggingConfig

_QUIET_NAMESPACES = ("twisted.web.client", "twisted.internet.tcp")

#: Lines waiting for the writer thread beyond which new ones are dropped.
MAX_PENDING_LINES = 20_000

#: How long the writer thread gathers lines before writing them: waking it
#: for every line cost more than formatting the line (a thread switch and a
#: hand-over of the GIL each time).
GATHER_SECONDS = 0.05

def level_named(name: str) -> LogLevel:
    return LogLevel.levelWithName(name)


class ClassicText:
    """
    An event as the line ``textFileLogObserver`` writes, identical to it,
    at a fraction of the cost for the common event: a format string naming
    plain fields.  Anything else (a failure, attribute or call syntax in the
    format, a field that will not format) is left to Twisted's formatter.
    """

    def __init__(self) -> None:
        self._formats: dict[str, bool] = {}
        self._second = -1
        self._stamp = ""

    def __call__(self, event: dict[str, Any]) -> str | None:
        if "log_failure" in event or event.get("log_system") is not None:
            return formatEventAsClassicLogText(event)
        log_format = event.get("log_format")
        if log_format is None:
            return formatEventAsClassicLogText(event)
        plain = self._formats.get(log_format)
        if plain is None:
            plain = self._formats[log_format] = _plain(log_format)
            if len(self._formats) > 1000:
                self._formats.clear()
        if not plain:
            return formatEventAsClassicLogText(event)
        try:
            # Plain field names only: str.format gives what Twisted's
            # formatter would, in C.
            text = log_format.format_map(event)
        except Exception:
            return formatEventAsClassicLogText(event)
        when = event.get("log_time")
        if when is None:
            return formatEventAsClassicLogText(event)
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        return f"{self._time(when)} [{system}] {text.replace(chr(10), chr(10) + chr(9))}\n"

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        return self._stamp


def _plain(log_format: str) -> bool:
    """
    Whether every field of a format string is a plain name (no attribute,
    index or call syntax, no nested field in a spec).
    """
    try:
        pieces = list(Formatter().parse(log_format))
    except ValueError:
        return False
    return all(
        field is None or (field.isidentifier() and "{" not in (spec or ""))
        for _, field, spec, _ in pieces
    )


def _json_line(event: dict[str, Any]) -> str:
    return "\x1e" + eventAsJSON(event) + "\n"


@implementer(ILogObserver)
class LogWriter:
    """
    An observer that formats each event to a line and has a writer thread
    write the lines to ``stream``.
    """

    def __init__(
        self,
        stream: IO[str],
        format_line: Callable[[dict[str, Any]], str | None],
        max_pending: int = MAX_PENDING_LINES,
    ) -> None:
        self._stream = stream
        self._format = format_line
        self._max_pending = max_pending
        self._pending: deque[str] = deque()
        self._dropped = 0
        self._armed = False
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        atexit.register(self.flush)

    def __call__(self, event: dict[str, Any]) -> None:
        line = self._format(event)
        if not line:
            return
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            return
        self._pending.append(line)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmgate-log", daemon=True)
            self._thread.start()
        if not self._armed:
            # The first line since the last write wakes the writer; the
            # lines that follow within GATHER_SECONDS cost only the append.
            self._armed = True
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(GATHER_SECONDS)
            self._armed = False
            self.flush()

    def flush(self) -> None:
        """
        Write every pending line now, from the calling thread.
        """
        with self._write_lock:
            pending = self._pending
            lines = []
            while pending:
                lines.append(pending.popleft())
            dropped, self._dropped = self._dropped, 0
            if dropped:
                lines.append(f"[llmgate] {dropped} log lines dropped: output too slow\n")
            if not lines:
                return
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
            except (OSError, ValueError):
                # A closed or full stream: the gateway goes on without logs.
                pass


@implementer(ILogObserver)
class LevelFilter:
    """
    Pass on events at or above a level, the level found once per namespace
    (Twisted's ``LogLevelFilterPredicate`` walks the namespace's parts for
    every event).  Events without a level or namespace are dropped, as
    there.
    """

    def __init__(
        self, observer: ILogObserver, level: LogLevel, quiet: dict[str, LogLevel]
    ) -> None:
        self._observer = observer
        self._predicate = LogLevelFilterPredicate(defaultLogLevel=level)
        for namespace, minimum in quiet.items():
            self._predicate.setLogLevelForNamespace(namespace, minimum)
        self._levels: dict[str, LogLevel] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        namespace = event.get("log_namespace")
        if level is None or namespace is None:
            return
        minimum = self._levels.get(namespace)
        if minimum is None:
            if len(self._levels) > 1000:
                self._levels.clear()
            minimum = self._levels[namespace] = self._predicate.logLevelForNamespace(
                namespace
            )
        if level >= minimum:
            self._observer(event)


def make_observer(config: LoggingConfig, stream: IO[str] | None = None) -> ILogObserver:
    """
    An observer writing to ``logging.file`` (or ``stream``, or stdout) in the
    configured format, dropping events below the configured level.
    """
    if stream is None:
        if config.file:
            stream = open(config.file, "a", encoding="utf-8")  # noqa: SIM115
        else:
            stream = sys.stdout
    writer = LogWriter(stream, _json_line if config.format == "json" else ClassicText())
    observer = LevelFilter(
        writer,
        level_named(config.level),
        {namespace: LogLevel.warn for namespace in _QUIET_NAMESPACES},
    )
    observer.flush = writer.flush  # type: ignore[attr-defined]
    return observer


__all__ = ["make_observer", "level_named", "formatEvent", "LogWriter", "ClassicText"]
