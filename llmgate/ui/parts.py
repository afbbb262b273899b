"""
Assembling the live view from the configuration: the hub, the live feed
middleware, the index with its watcher and thread, and the HTTP view.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from llmgate.config import ConfigError, GatewayConfig
from llmgate.middleware.live import Hub, LiveFeed

NEEDS_TRACE = (
    "The live view reads the trace files: enable the trace middleware "
    "(middlewares: - type: trace) to use it."
)
TURNED_OFF = "The live view is turned off (ui.enabled: false)."


class ViewParts:
    """
    :ivar view: what answers ``/ui/`` and ``/api/``.
    :ivar stages: middleware to add to the pipeline (the live feed), or none.
    """

    log = Logger()

    def __init__(self, config: GatewayConfig, reactor: Any, middlewares: Sequence[Any]) -> None:
        from llmgate.ui.view import DisabledView

        self.reactor = reactor
        self.stages: list[Any] = []
        self.index: Any = None
        self.watcher: Any = None
        self.pool: ThreadPool | None = None
        trace = next((m for m in middlewares if getattr(m, "name", "") == "trace"), None)
        wanted = config.ui.enabled
        if wanted is False:
            self.view: Any = DisabledView(TURNED_OFF)
            return
        if trace is None:
            if wanted:
                raise ConfigError(
                    "ui.enabled: the live view needs the trace middleware; enable a "
                    "middleware of type trace, or set ui.enabled: false"
                )
            self.view = DisabledView(NEEDS_TRACE)
            return
        from llmgate.ui.index import TraceIndex
        from llmgate.ui.summary import summary_of_exchange
        from llmgate.ui.view import LiveView

        self.pool = ThreadPool(minthreads=0, maxthreads=1, name="llmgate-ui")
        self.hub = Hub()
        self.index = TraceIndex(
            reactor,
            trace.directory,
            self.run_in_thread,
            max_sessions=config.ui.max_sessions,
            max_calls=config.ui.max_calls,
            hub=self.hub,
        )
        with_text = bool(getattr(trace, "include_body", True))
        scrub = getattr(trace, "scrub", str)

        def finished(exchange: Any) -> None:
            self.index.add_own(summary_of_exchange(exchange, reactor.seconds(), with_text, scrub))

        self.live = LiveFeed(
            reactor, self.hub, on_close=self.stop, on_finished=finished,
            with_text=with_text, scrub=scrub,
        )
        self.view = LiveView(self.index, self.live, self.hub, reactor)
        self.stages = [self.live]
        self._how = config.ui.watch
        self._poll_seconds = config.ui.poll_seconds
        reactor.callWhenRunning(self.start)

    @property
    def enabled(self) -> bool:
        return self.index is not None

    def run_in_thread(self, function: Any, *args: Any) -> Any:
        assert self.pool is not None
        return deferToThreadPool(self.reactor, self.pool, function, *args)

    def start(self) -> Any:
        """
        Start the thread, watch the directory, then index what it holds.
        """
        from llmgate.ui.watch import make_watcher

        if self.pool is None or self.pool.started:
            return None
        self.pool.start()
        self.watcher = make_watcher(self.index, self.reactor, self._poll_seconds, self._how)
        self.watcher.start()
        d = self.index.load()
        d.addErrback(lambda f: self.log.failure("live view: indexing the traces failed", f))
        return d

    def stop(self) -> None:
        self.view.close()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.pool is not None and self.pool.started:
            self.pool.stop()
