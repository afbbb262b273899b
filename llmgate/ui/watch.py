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
    Follow the directory with inotify: a trace lands by a rename into place
    (``IN_MOVED_TO``); retention deletes.  On a queue overflow, fall back to
    one listing.
    """

    log = Logger()

    def __init__(self, index: TraceIndex, reactor: Any) -> None:
        from twisted.internet import inotify

        self.inotify_module = inotify
        self.index = index
        self.reactor = reactor
        self.notifier = inotify.INotify(reactor)

    def start(self) -> None:
        module = self.inotify_module
        self.notifier.startReading()
        self.notifier.watch(
            FilePath(self.index.directory),
            mask=module.IN_MOVED_TO | module.IN_CLOSE_WRITE | module.IN_DELETE | module.IN_MOVED_FROM,
            callbacks=[self._notified],
        )

    def stop(self) -> None:
        self.notifier.loseConnection()

    def _notified(self, ignored: Any, path: FilePath, mask: int) -> None:
        module = self.inotify_module
        name = path.basename().decode("utf-8", "replace") if isinstance(path.basename(), bytes) else path.basename()
        if mask & module.IN_Q_OVERFLOW:
            PollWatcher(self.index, self.reactor, 1)._look()
        elif mask & (module.IN_DELETE | module.IN_MOVED_FROM):
            self.index.file_removed(name)
        elif mask & (module.IN_MOVED_TO | module.IN_CLOSE_WRITE):
            self.index.file_added(name)


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
