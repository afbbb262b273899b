"""
Keeping the index current: inotify on Linux, a listing every few seconds
elsewhere (and on file systems where inotify sees nothing of other
machines' writes, ``ui.poll_seconds`` still applies: see docs/ui.md).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from llmgate.ui.index import TraceIndex

#: How long the inotify descriptor rests after each read (see INotifyWatcher).
REST_SECONDS = 0.1


class PollWatcher:
    """
    List the directory every ``seconds`` (in a thread) and tell the index
    what came and went.  The next listing starts only after the last one is
    merged, so a slow disk never piles listings up.
    """

    log = Logger()

    def __init__(self, index: TraceIndex, reactor: Any, seconds: float) -> None:
        self.index = index
        self.loop = LoopingCall(self._look)
        self.loop.clock = reactor
        self.seconds = seconds

    def start(self) -> None:
        self.loop.start(self.seconds, now=False)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def _look(self) -> Any:
        if not self.index.ready:
            return None
        d = self.index.run_in_thread(self.index.scan_difference)

        def merge(difference: tuple[list[str], list[str]]) -> None:
            added, removed = difference
            for name in removed:
                self.index.file_removed(name)
            for name in added:
                self.index.file_added(name)

        d.addCallback(merge)
        d.addErrback(lambda f: self.log.failure("live view: listing traces failed", f))
        return d


class INotifyWatcher:
    """
    Follow the directory with inotify: a trace lands whole, by a rename into
    place (``IN_MOVED_TO``) or by linking a file written unnamed
    (``IN_CREATE``); retention deletes (``IN_DELETE``).  On a queue
    overflow, fall back to one listing.

    Events are read by :func:`_names_reader`, which hands over bare names:
    Twisted's own reader builds a ``FilePath`` per event, which cost more
    than the rest of indexing a call.  After each read the descriptor rests
    for ``rest_seconds`` while the kernel queues what lands meanwhile: one
    wake-up of the reactor per interval, not one per trace written (each
    cost as much as the rest of indexing this process's own call).
    """

    log = Logger()

    def __init__(self, index: TraceIndex, reactor: Any, rest_seconds: float = REST_SECONDS) -> None:
        from twisted.internet import inotify

        self.inotify_module = inotify
        self.index = index
        self.reactor = reactor
        self.notifier = _names_reader(inotify)(reactor, self._notified, rest_seconds)

    def start(self) -> None:
        module = self.inotify_module
        self.notifier.startReading()
        # One event per trace: it lands by a rename or a link and goes by
        # unlink.  A named temporary file's creation is an IN_CREATE too: its
        # name (".name.tmp") is no trace's, and the index passes over it.
        self.notifier.watch(
            FilePath(self.index.directory),
            mask=module.IN_MOVED_TO | module.IN_CREATE | module.IN_DELETE,
        )

    def stop(self) -> None:
        self.notifier.rest_over()
        self.notifier.loseConnection()

    def _notified(self, name: str, mask: int) -> None:
        module = self.inotify_module
        if mask & module.IN_Q_OVERFLOW:
            PollWatcher(self.index, self.reactor, 1)._look()
        elif mask & module.IN_DELETE:
            self.index.file_removed(name)
        elif mask & (module.IN_MOVED_TO | module.IN_CREATE):
            self.index.file_added(name)


def _names_reader(inotify: Any) -> Any:
    """
    An ``INotify`` whose events go to one callable as ``(name, mask)``.
    """
    import struct

    header = struct.Struct("=iIII")

    class NamesINotify(inotify.INotify):  # type: ignore[misc, name-defined]
        def __init__(self, reactor: Any, callback: Any, rest_seconds: float) -> None:
            super().__init__(reactor)
            self._callback = callback
            self._rest_seconds = rest_seconds
            self._resting: Any = None

        def doRead(self) -> Any:
            result = super().doRead()
            if self._rest_seconds > 0 and self.connected:
                self.stopReading()
                self._resting = self.reactor.callLater(self._rest_seconds, self._rested)
            return result

        def _rested(self) -> None:
            self._resting = None
            if self.connected and not self.disconnecting:
                self.startReading()

        def rest_over(self) -> None:
            if self._resting is not None and self._resting.active():
                self._resting.cancel()
            self._resting = None

        def _doRead(self, data: bytes) -> None:
            buffer = self._buffer + data
            at, size = 0, header.size
            while len(buffer) - at >= size:
                wd, mask, _, length = header.unpack_from(buffer, at)
                name = buffer[at + size : at + size + length].rstrip(b"\0")
                at += size + length
                if wd == -1 or wd in self._watchpoints:
                    self._callback(name.decode("utf-8", "replace"), mask)
            self._buffer = buffer[at:]

    return NamesINotify


def make_watcher(index: TraceIndex, reactor: Any, poll_seconds: float, how: str = "auto") -> Any:
    """
    inotify where the platform and reactor have it (``auto``); a poll
    otherwise or when asked.
    """
    if how == "poll":
        return PollWatcher(index, reactor, poll_seconds)
    if how == "inotify":
        return INotifyWatcher(index, reactor)
    try:
        return INotifyWatcher(index, reactor)
    except Exception as error:  # not Linux, or a reactor without file descriptors
        PollWatcher.log.info(
            "live view: no inotify ({error}); listing the trace directory every {seconds}s",
            error=str(error),
            seconds=poll_seconds,
        )
        return PollWatcher(index, reactor, poll_seconds)
